//! Augur's failure predictor: health samples, the health agent, synthetic traces, feature
//! windows, an LSTM autoencoder and gradient-boosted failure model, evaluation and the risk
//! policy. The storage node embeds this crate; `augur-predict` is its training CLI.
//!
//! The node's path through it: an [`Agent`] samples the machine (see [`agent::linux`]) and
//! keeps a bounded history; [`Model::load`] reads the shipped model (refusing other schema
//! versions); [`Model::score_samples`] turns the history into a [`Risk`] with reasons; a
//! [`RiskPolicy`] on the metadata leader turns every node's risk into ordered actions.
#![warn(missing_docs)]

pub mod agent;
pub mod eval;
pub mod features;
pub mod gbt;
pub mod generate;
pub mod lstm;
pub mod model;
pub mod policy;
pub mod progress;
pub mod report;
pub mod sample;
pub mod shap;
pub mod trace;
pub mod train;

pub use agent::{Agent, AgentConfig, HistoryHandle};
pub use model::{Model, ModelError, Risk};
pub use policy::{PolicyConfig, PolicyDecision, RiskPolicy};
pub use sample::{FailureRecord, HealthSample};
