//! Graph target against the fake Graph server (issue 4): being written.
