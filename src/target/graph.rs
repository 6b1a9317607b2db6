//! Placeholder: the Graph target is being written (issue 4). It refuses to run.

use std::time::Instant;

use super::{Mapped, Op, Outcome, RemoteObject, Target, TargetError};
use crate::config::TargetConfig;
use crate::error::{Error, Result};
use crate::log::event::ObjectKind;

pub struct GraphTarget {}

impl GraphTarget {
    pub fn from_config(_cfg: &TargetConfig) -> Result<GraphTarget> {
        Err(Error::Target("the graph target is not built yet".into()))
    }
}

impl Target for GraphTarget {
    async fn probe(&self) -> Result<(), TargetError> {
        Err(TargetError::new(None, "not built"))
    }
    async fn list(&self, _kind: ObjectKind) -> Result<Vec<RemoteObject>, TargetError> {
        Err(TargetError::new(None, "not built"))
    }
    async fn candidates(
        &self,
        _anchor: &str,
        _object: &Mapped,
    ) -> Result<Vec<RemoteObject>, TargetError> {
        Err(TargetError::new(None, "not built"))
    }
    async fn apply(&self, ops: &[Op], _deadline: Instant) -> Vec<Outcome> {
        ops.iter().map(|_| Outcome::NotAttempted).collect()
    }
}
