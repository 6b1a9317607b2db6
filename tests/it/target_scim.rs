//! SCIM target against scim2-server (issue 4): being written.
