//! A fake Microsoft Graph server (being written, issue 4).

/// The fake Graph server of a test.
pub struct GraphFake {}
