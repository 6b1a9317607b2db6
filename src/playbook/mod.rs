//! Handover playbooks: files ([`file`]), the pure state machine ([`machine`]) and the
//! runner that carries out its decisions ([`runner`]).

pub mod file;
pub mod machine;
pub mod runner;

pub use file::{Action, Playbook, Role, Step};
