//! The scoring round: the node and disk models, reloaded when their files change, scored
//! over the agent's history and combined into the risk the heartbeat carries.

use super::{lock, now_ms, Health, ModelStatus, RiskPoint};
use augur_predictor::{combine_risks, DiskModel, HistoryHandle, Model};
use augur_predictor::{HealthSample, ModelRisk};
use augur_proto::model::limits::bounded;
use augur_proto::wire::{RiskReport, RiskState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A model file and when it was last (tried to be) loaded.
struct Loaded<M> {
    path: PathBuf,
    modified: Option<SystemTime>,
    model: Result<M, String>,
}

impl<M> Loaded<M> {
    fn new(path: PathBuf) -> Self {
        Loaded {
            path,
            modified: None,
            model: Err("not loaded yet".into()),
        }
    }

    /// (Re)loads the file when its modification time changed since the last attempt.
    fn refresh(&mut self, what: &str, load: impl FnOnce(&Path) -> Result<M, String>) {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_some() && modified == self.modified {
            return;
        }
        if modified.is_none() && self.modified.is_none() && self.model.is_err() {
            // Missing before and still missing: keep the reason, do not log again.
            if !matches!(&self.model, Err(r) if r == "not loaded yet") {
                return;
            }
        }
        self.modified = modified;
        self.model = load(&self.path);
        match &self.model {
            Ok(_) => tracing::info!(model = what, path = %self.path.display(), "model loaded"),
            Err(e) => {
                tracing::warn!(model = what, error = %e, "model not loaded: this node reports no risk from it")
            }
        }
    }

    fn status(&self) -> String {
        match &self.model {
            Ok(_) => format!("loaded: {}", self.path.display()),
            Err(e) => e.clone(),
        }
    }
}

/// Scores the history every round: the node model from the history's incrementally kept
/// grid (no copy of the 5-second samples), the disk model from its SMART readings.
pub(super) async fn score_loop(health: Arc<Health>, history: HistoryHandle) {
    let mut node = Loaded::<Model>::new(health.settings.node_model.clone());
    let mut disk = Loaded::<DiskModel>::new(health.settings.disk_model.clone());
    // The first round waits for the agent's first samples (its first call only primes
    // counters).
    let mut wait = Duration::from_millis(health.settings.sample_interval_ms.saturating_mul(2));
    loop {
        tokio::time::sleep(wait).await;
        let models = tokio::task::spawn_blocking({
            let history = history.clone();
            move || {
                node.refresh("node", |p| Model::load(p).map_err(|e| e.to_string()));
                disk.refresh("disk", |p| DiskModel::load(p).map_err(|e| e.to_string()));
                let node_risk = node.model.as_ref().ok().map(|m| history.score_node(m));
                let smart = history.smart_snapshot();
                let risk = combine(node.model.as_ref(), node_risk, disk.model.as_ref(), &smart);
                (node, disk, risk)
            }
        })
        .await;
        let Ok((n, d, risk)) = models else {
            // The models went with the panicking round: load them again and go on. A loop
            // that ended here would leave the last score in every heartbeat, its time never
            // moving, and the leader would hold the node where that score put it for good.
            tracing::error!("scoring round panicked; the node reports no risk this round");
            node = Loaded::<Model>::new(health.settings.node_model.clone());
            disk = Loaded::<DiskModel>::new(health.settings.disk_model.clone());
            wait = Duration::from_millis(health.settings.score_interval_ms.max(1_000));
            let mut s = lock(&health.store);
            s.risk = RiskState::Pending {
                reason: "the last scoring round failed (a bug: see the node's log)".into(),
            };
            continue;
        };
        node = n;
        disk = d;
        let round = health.settings.score_interval_ms;
        wait = Duration::from_millis(match (&node.model, round) {
            (_, r) if r > 0 => r,
            (Ok(m), _) => m.alert.round_ms.max(1_000) as u64,
            (Err(_), _) => 300_000,
        });
        let mut s = lock(&health.store);
        s.models = ModelStatus {
            node: node.status(),
            disk: disk.status(),
        };
        if s.timeline.len() >= health.settings.risk_timeline {
            s.timeline.pop_front();
        }
        s.timeline.push_back(RiskPoint {
            at_ms: now_ms(),
            risk: risk.clone(),
        });
        s.risk = risk;
    }
}

/// One round: the node model's and (with SMART) the disk model's risk, combined.
pub fn score(
    node: Result<&Model, &String>,
    disk: Result<&DiskModel, &String>,
    samples: &[HealthSample],
) -> RiskState {
    let node_risk = node.ok().map(|m| m.score_samples(samples));
    combine(node, node_risk, disk, samples)
}

/// [`score`] with the node model's risk already computed (the scorer takes it from the
/// history's grid); `samples` need only hold the SMART readings.
fn combine(
    node: Result<&Model, &String>,
    node_risk: Option<Result<augur_predictor::Risk, augur_predictor::ModelError>>,
    disk: Result<&DiskModel, &String>,
    samples: &[HealthSample],
) -> RiskState {
    let has_smart = samples.iter().any(|s| s.smart.is_some());
    let disk_risk = match disk {
        Ok(m) if has_smart => Some(m.score_samples(samples)),
        _ => None,
    };
    let node_ok = match (&node, &node_risk) {
        (Ok(m), Some(Ok(r))) => Some(ModelRisk {
            risk: r,
            threshold: m.alert.threshold,
        }),
        _ => None,
    };
    let disk_ok = match (&disk, &disk_risk) {
        (Ok(m), Some(Ok(r))) => Some(ModelRisk {
            risk: r,
            threshold: m.alert.threshold,
        }),
        _ => None,
    };
    let enter = match (&node, &disk) {
        (Ok(m), _) => m.alert.threshold,
        (Err(_), Ok(m)) => m.alert.threshold,
        _ => 0.5,
    };
    let model = match (node_ok.is_some(), disk_ok.is_some()) {
        (true, true) => "node+disk",
        (true, false) => "node",
        _ => "disk",
    };
    if let Some(r) = combine_risks(node_ok, disk_ok, enter) {
        if r.probability.is_finite() {
            return RiskState::Scored(RiskReport {
                score: r.probability.clamp(0.0, 1.0),
                model: model.to_string(),
                at_ms: r.at_ms,
                reasons: r
                    .reasons
                    .iter()
                    .take(augur_proto::wire::MAX_RISK_REASONS)
                    .map(|x| (x.feature.clone(), x.contribution))
                    .collect(),
            });
        }
    }
    let disk_why = match (&disk, &disk_risk) {
        (Err(e), _) => format!("disk model: {e}"),
        (Ok(_), None) => "disk model: no SMART readings on this node".to_string(),
        (Ok(_), Some(Err(e))) => format!("disk model: {e}"),
        (Ok(_), Some(Ok(_))) => "disk model: score not finite".to_string(),
    };
    match (&node, node_risk) {
        (Err(e), _) if !matches!(disk_risk, Some(Ok(_)) | Some(Err(_))) => RiskState::NoModel {
            reason: bounded(format!("node model: {e}; {disk_why}")),
        },
        (Err(e), _) => RiskState::Pending {
            reason: bounded(format!("node model: {e}; {disk_why}")),
        },
        (Ok(_), Some(Err(e))) => RiskState::Pending {
            reason: bounded(format!("node model: {e}; {disk_why}")),
        },
        (Ok(_), _) => RiskState::Pending {
            reason: bounded(format!("node model: score not finite; {disk_why}")),
        },
    }
}
