//! One risk per storage node from the node model and the disk model.
//!
//! The two models answer different questions on different clocks: the node model gives
//! P(node fails within hours) from metrics sampled every few seconds, the disk model
//! P(a data device fails within weeks) from hourly SMART. Their probabilities are not on one
//! scale (a 30-day probability of 0.2 is alarming, a 24-hour one of 0.2 is not), but each
//! model carries the alert threshold it was tuned at. The combiner therefore moves each risk
//! onto the policy's scale by its distance from its own threshold in log-odds, and takes the
//! larger: the combined risk reaches the policy's `enter` exactly when either model reaches
//! its own alert threshold, and the reasons say which model and which signal it was.
//!
//! Why the maximum and not a product of survival odds: the events overlap (a dying disk is
//! also what the node model sees failing), and an operator must be able to point at the one
//! model that raised an alert.

use crate::model::{Reason, Risk};

/// One model's risk and the threshold it alerts at.
#[derive(Debug, Clone, Copy)]
pub struct ModelRisk<'a> {
    /// The model's verdict.
    pub risk: &'a Risk,
    /// The probability at which that model alerts (its `alert.threshold`).
    pub threshold: f64,
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `risk` moved onto the scale where `enter` is the alert threshold.
fn aligned(m: &ModelRisk, enter: f64) -> f64 {
    sigmoid(logit(m.risk.probability) - logit(m.threshold) + logit(enter))
}

/// The storage node's risk: the larger of the node-model and disk-model risks after moving
/// each onto the policy's scale (see the module docs), with the winning model's reasons
/// first (prefixed `node:` / `disk:`) and the other model's strongest reason after them.
/// `None` when neither model could score. `anomaly` is the node model's.
pub fn combine_risks(node: Option<ModelRisk>, disk: Option<ModelRisk>, enter: f64) -> Option<Risk> {
    let tag = |prefix: &str, r: &Reason| Reason {
        feature: format!("{prefix}:{}", r.feature),
        ..r.clone()
    };
    let scored: Vec<(&str, ModelRisk, f64)> = [("node", node), ("disk", disk)]
        .into_iter()
        .filter_map(|(name, m)| m.map(|m| (name, m, aligned(&m, enter))))
        .collect();
    let (win, other) = match scored.as_slice() {
        [] => return None,
        [one] => (one, None),
        [a, b] => {
            if a.2 >= b.2 {
                (a, Some(b))
            } else {
                (b, Some(a))
            }
        }
        _ => return None,
    };
    let mut reasons: Vec<Reason> = win.1.risk.reasons.iter().map(|r| tag(win.0, r)).collect();
    if let Some(o) = other {
        reasons.extend(o.1.risk.reasons.first().map(|r| tag(o.0, r)));
    }
    Some(Risk {
        node: win.1.risk.node.clone(),
        at_ms: scored.iter().map(|s| s.1.risk.at_ms).max().unwrap_or(0),
        probability: win.2,
        anomaly: node.map_or(f64::NAN, |n| n.risk.anomaly),
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn risk(p: f64, feature: &str) -> Risk {
        Risk {
            node: "s-1".into(),
            at_ms: 5,
            probability: p,
            anomaly: 0.1,
            reasons: vec![Reason {
                feature: feature.into(),
                value: 1.0,
                contribution: 0.5,
            }],
        }
    }

    #[test]
    fn each_model_reaches_enter_at_its_own_threshold() {
        let quiet_node = risk(0.01, "err_log_rate_1h");
        let sick_disk = risk(0.30, "smart_197_raw");
        let node = ModelRisk {
            risk: &quiet_node,
            threshold: 0.7,
        };
        let disk = ModelRisk {
            risk: &sick_disk,
            threshold: 0.3,
        };
        let c = combine_risks(Some(node), Some(disk), 0.7).unwrap();
        assert!((c.probability - 0.7).abs() < 1e-9, "{}", c.probability);
        assert_eq!(c.reasons[0].feature, "disk:smart_197_raw");
        assert_eq!(c.reasons[1].feature, "node:err_log_rate_1h");
        assert_eq!(c.anomaly, 0.1);
        // Below its threshold, the disk stays below enter; the node model alone decides.
        let calm_disk = risk(0.05, "smart_5_raw");
        let c = combine_risks(
            Some(node),
            Some(ModelRisk {
                risk: &calm_disk,
                threshold: 0.3,
            }),
            0.7,
        )
        .unwrap();
        assert!(c.probability < 0.7);
        let alone = combine_risks(Some(node), None, 0.7).unwrap();
        assert!(
            (alone.probability - 0.01).abs() < 1e-9,
            "node scale is the policy scale"
        );
        assert!(combine_risks(None, None, 0.7).is_none());
        // Monotone in each input.
        let hotter = risk(0.5, "smart_197_raw");
        let c2 = combine_risks(
            None,
            Some(ModelRisk {
                risk: &hotter,
                threshold: 0.3,
            }),
            0.7,
        )
        .unwrap();
        assert!(c2.probability > 0.7);
    }
}
