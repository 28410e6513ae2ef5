//! The master's durable state: what operators set (weights, quotas) and
//! what frameworks reserved dynamically. Tasks and offers are soft state,
//! rebuilt from agents and schedulers after a restart, as in the paper.
//!
//! Calling order, for drivers (after raft-rs `ready()`): when
//! [`crate::Master::poll_registry`] returns a registry, persist it BEFORE
//! sending any transmit or operator reply produced by the same input;
//! those may tell a peer about the change.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use stoa_proto::{AgentId, FrameworkId, Resources, Role, Submission, TaskId};

/// A role's quota as operators set it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaSpec {
    pub guarantee: Resources,
    /// In resource syntax, zeros allowed (`cpus:8;gpus:0`); none for no limit.
    pub limit: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub weights: BTreeMap<Role, f64>,
    pub quotas: BTreeMap<Role, QuotaSpec>,
    /// Dynamic reservations per agent and role.
    pub reservations: BTreeMap<AgentId, BTreeMap<Role, Resources>>,
    /// Frameworks whose schedulers the master hosts. Stored apart from the
    /// rest (see the master's registry store), so registries written before
    /// hosting existed still load.
    #[serde(skip)]
    pub hosted: BTreeMap<FrameworkId, HostedRecord>,
}

/// A hosted framework as the registry keeps it: enough to keep hosting it
/// after a master restart, and to recognise the instance that should be
/// running when its agent re-registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedRecord {
    /// With `framework.id` and `framework.principal` set.
    pub submission: Submission,
    /// Instances launched so far: names the next one.
    pub launched: u64,
    /// The instance that should be running, and its agent.
    pub current: Option<(TaskId, AgentId)>,
}
