//! Augur's failure predictor: health samples, the health agent, synthetic traces and real
//! failure data, feature windows, an LSTM autoencoder and gradient-boosted node model, a
//! SMART disk model trained on real drives, evaluation and the risk policy. The storage node
//! embeds this crate; `augur-predict` is its training CLI.
//!
//! The node's path through it: an [`Agent`] samples the machine (see [`agent::linux`], with
//! SMART from [`agent::smart`]) and keeps a bounded history; [`Model::load`] and
//! [`disk::DiskModel::load`] read the shipped models (refusing other kinds, schema versions
//! and corrupt trees); [`HistoryHandle::score_node`] (the node model, from the one-minute
//! grid the history keeps as samples arrive) and `DiskModel::score_samples` (of the SMART
//! readings) turn the history into a [`Risk`] with reasons; [`combine::combine_risks`]
//! makes the node's one risk of the two; a [`RiskPolicy`] on the metadata leader turns
//! every node's risk into ordered actions.
#![warn(missing_docs)]

pub mod agent;
pub mod baselines;
pub mod combine;
pub mod disk;
pub mod eval;
pub mod features;
pub mod gbt;
pub mod generate;
pub mod import;
pub mod lstm;
pub mod model;
pub mod policy;
pub mod progress;
pub mod report;
pub mod sample;
pub mod shap;
pub mod split;
pub mod trace;
pub mod train;

pub use agent::{Agent, AgentConfig, HistoryHandle};
pub use combine::{combine_risks, ModelRisk};
pub use disk::DiskModel;
pub use model::{Model, ModelError, Risk};
pub use policy::{PolicyConfig, PolicyDecision, RiskPolicy};
pub use sample::{FailureRecord, HealthSample};
