//! Directory sources: reading users and groups (full import) and their changes (delta
//! import) from the source directory.
//!
//! * [`change`]: what every source hands the importer ([`Change`]), in the log's types.
//! * [`dn`]: DNs in a comparable form (member resolution, scope rules).
//! * [`ldap`]: connecting, binding and searching, shared by every source kind.
//! * `wire`: the one reader of what a server sends, on every path: its own socket, entries
//!   decoded in place from one buffer, errors instead of panics, `[source]`'s limits.
//! * [`ad`]: Active Directory (and Samba AD): paged full import with extended DNs and
//!   ranged member retrieval, DirSync deltas, tombstone lifetime.
//! * [`openldap`]: OpenLDAP (paged full import, RFC 4533 refreshOnly deltas) and generic
//!   LDAPv3 servers (full imports only).

pub mod ad;
pub mod change;
pub mod dn;
pub mod ldap;
pub mod mapping;
pub mod openldap;
pub mod result;
mod wire;

pub use ad::{AdOptions, AdSource, Delta, DeltaItem, DeltaObject, FullImport};
pub use change::Change;
pub use ldap::{ConnectOptions, LdapClient};
pub use openldap::{Flavour, LdapFullImport, OpenLdapOptions, OpenLdapSource, SyncDelta};
