//! The sync engine: import -> plan -> guard -> export. Decisions are pure functions of the
//! projections; only the runners talk to servers and the log.

pub mod anchor;
pub mod deletions;
pub mod duplicates;
pub mod export;
pub mod idle;
pub mod import;
pub mod instance;
pub mod preflight;
pub mod rebuild;
pub mod reconcile;
pub mod run;
pub mod scope;
pub mod service;
