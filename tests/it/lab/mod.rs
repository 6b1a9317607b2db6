//! Test lab: fixtures that start real servers for the integration tests.
//!
//! * [`pg_database`]: a fresh database on one PostgreSQL server per test process.
//! * [`Slapd::start`]: an OpenLDAP server per test (RFC 4533 source), optionally
//!   with a session log.
//! * [`Samba::start`]: a Samba AD DC per test (DirSync source), copied from a
//!   template provisioned once per machine.
//! * [`Scim::start`] / [`Scim::tenant`]: scim2-server, per test or a tenant of a
//!   shared one.
//!
//! Every server dies with the test process, whatever ends it (see `proc.rs`), and
//! per-test servers die when their fixture is dropped. A missing binary panics
//! with "run scripts/install-deps". Measured start times are at the top of each
//! module.
// Fixtures are a library for every test module: not all of it is used by all.
#![allow(dead_code, unused_imports)]

pub mod graph;
pub mod hostile_ldap;
pub mod postgres;
pub mod proc;
pub mod samba;
pub mod scim;
pub mod scim_proxy;
pub mod slapd;
pub mod smallfs;

pub use graph::GraphFake;
pub use postgres::{pg_database, pg_server_pid, pg_server_url};
pub use samba::Samba;
pub use scim::{Scim, ScimTenant};
pub use scim_proxy::{ProxyRules, ScimProxy};
pub use slapd::{Slapd, SlapdOptions};
pub use smallfs::SmallFs;
pub mod ds389;
