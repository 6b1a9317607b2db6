//! Directory sources: reading users and groups (full import) and their changes (delta
//! import) from the source directory.
//!
//! * [`ldap`]: connecting, binding and searching, shared by every source kind.
//! * [`ad`]: Active Directory (and Samba AD): paged full import with extended DNs and
//!   ranged member retrieval, DirSync deltas, tombstone lifetime.
//! * [`openldap`]: OpenLDAP (paged full import, RFC 4533 refreshOnly deltas) and generic
//!   LDAPv3 servers (full imports only).

pub mod ad;
pub mod ldap;
pub mod mapping;
pub mod openldap;

pub use ad::{AdOptions, AdSource, Delta, DeltaItem, DeltaObject, FullImport};
pub use ldap::{ConnectOptions, LdapClient};
pub use openldap::{Flavour, LdapFullImport, OpenLdapOptions, OpenLdapSource, SyncDelta};
