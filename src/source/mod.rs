//! Directory sources: reading users and groups (full import) and their changes (delta
//! import) from the source directory.
//!
//! * [`change`]: what every source hands the importer ([`Change`]), in the log's types.
//! * [`dn`]: DNs in a comparable form (member resolution, scope rules).
//! * [`ldap`]: connecting, binding and searching, shared by every source kind.
//! * [`result`]: what an LDAP result code means, and the errors of connecting and binding.
//! * `wire`: the one reader of what a server sends, on every path: its own socket, entries
//!   decoded in place from one buffer, errors instead of panics, `[source]`'s limits.
//! * [`ad`]: Active Directory (and Samba AD): paged full import with extended DNs and
//!   ranged member retrieval, DirSync deltas, tombstone lifetime.
//! * [`openldap`]: OpenLDAP (paged full import, RFC 4533 refreshOnly deltas) and generic
//!   LDAPv3 servers (full imports only).
//!
//! Each kind implements [`Source`], and [`connect`] is the one place that picks the kind:
//! the importer drives a `Box<dyn Source>` and sees only [`Read`]s of [`Change`]s and
//! objects.

use std::future::Future;
use std::pin::Pin;

use crate::config::{SourceConfig, SourceKind};
use crate::error::Result;
use crate::log::event::SourceInfoRecorded;

pub mod ad;
pub mod change;
pub mod dn;
pub mod ldap;
pub mod openldap;
pub mod result;
mod wire;

pub use ad::{AdOptions, AdSource, Delta, DeltaItem, DeltaObject, FullImport};
pub use change::{Change, Read};
pub use ldap::{ConnectOptions, LdapClient};
pub use openldap::{
    Flavour, GenericLdapSource, LdapFullImport, OpenLdapOptions, OpenLdapSource, SyncDelta,
};

/// The cursor an AD source records: a DirSync cookie.
pub const DIRSYNC_CURSOR: &str = "dirsync";
/// The cursor an OpenLDAP or 389 DS source records: an RFC 4533 sync cookie.
pub const RFC4533_CURSOR: &str = "rfc4533";
/// The cursor kind of a source without change tracking (`kind = "ldap"`): no cursor is
/// ever recorded with it, and the importer never asks such a source for a delta.
pub const ALWAYS_FULL_CURSOR: &str = "none";

/// What a [`Source`] call returns: boxed, so every kind can stand behind one
/// `Box<dyn Source>` (one allocation per call, none per entry).
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A connected, bound source directory, as the importer uses it.
pub trait Source: Send {
    /// The kind of cursor this source records ([`cursor_kind`] of its kind).
    fn cursor_kind(&self) -> &'static str;

    /// Facts about the source to record (AD's tombstone lifetime), if it has any.
    fn info(&mut self) -> SourceFuture<'_, Option<SourceInfoRecorded>>;

    /// A full import ([`Read::Full`]), with a cursor taken before it.
    fn full(&mut self) -> SourceFuture<'_, Read>;

    /// What changed since `cookie` ([`Read::Delta`]). A cookie the server rejects is
    /// `Error::SourceCookieRejected`; one dirsync itself cannot use, `Error::CookieUnusable`.
    fn delta<'a>(&'a mut self, cookie: &'a [u8]) -> SourceFuture<'a, Read>;

    /// The attribute the run anchors on, as the anchor check found it (`None`: unknown):
    /// a source that would otherwise work it out from the directory on each read uses it.
    fn anchor_in_use(&mut self, _attribute: Option<&str>) {}

    /// The connection, for the checks a run makes before it records anything (the anchor
    /// check): they share the read's connection and bind instead of opening their own.
    fn client(&mut self) -> &mut LdapClient;

    /// Unbind and close. Errors are ignored: the connection is going away anyway.
    fn close(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The attributes imports keep for a source of `kind` besides what the mapping reads.
pub fn kept_for(kind: SourceKind) -> &'static [&'static str] {
    match kind {
        SourceKind::Ad => ad::AD_ATTRIBUTES,
        SourceKind::Openldap | SourceKind::Ldap => openldap::LDAP_ATTRIBUTES,
    }
}

/// The attributes an import keeps of what `cfg`'s source reads, lower case: the kind's own
/// list (what identifies an object to people) and what the mapping reads, the same for
/// full and delta imports.
pub fn kept(cfg: &SourceConfig) -> Vec<String> {
    let mut keep: Vec<String> = kept_for(cfg.kind)
        .iter()
        .map(|a| a.to_string())
        .chain(cfg.mapped.iter().map(|a| a.to_ascii_lowercase()))
        .collect();
    keep.sort();
    keep.dedup();
    keep
}

/// The cursor kind a source of `kind` records ([`ALWAYS_FULL_CURSOR`]: none).
pub fn cursor_kind(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Ad => DIRSYNC_CURSOR,
        SourceKind::Openldap => RFC4533_CURSOR,
        SourceKind::Ldap => ALWAYS_FULL_CURSOR,
    }
}

/// Connect and bind to the source `cfg` describes, as the source of its kind.
pub async fn connect(cfg: &SourceConfig, conn: &ConnectOptions) -> Result<Box<dyn Source>> {
    Ok(match cfg.kind {
        SourceKind::Ad => Box::new(AdSource::connect(cfg, conn, AdOptions::default()).await?),
        SourceKind::Openldap => {
            Box::new(OpenLdapSource::connect(cfg, conn, OpenLdapOptions::default()).await?)
        }
        SourceKind::Ldap => Box::new(GenericLdapSource::new(
            OpenLdapSource::connect(cfg, conn, OpenLdapOptions::default()).await?,
        )),
    })
}
