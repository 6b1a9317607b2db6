//! From the projections to what the target needs (pure): [`mapping`] (a source object as
//! the target should hold it), [`plan`] (creates, updates and deletions against the
//! ownership ledger, and the deletion guard) and [`matching`] (new objects against what the
//! target already holds). The folders follow the data: source -> log -> project -> plan ->
//! target.

pub mod effective;
pub mod filter;
pub mod focus;
pub mod mapping;
pub mod matching;
#[allow(clippy::module_inception)]
pub mod plan;
