//! The risk policy replayed over an evaluation's scores, so the figures an operator lives
//! with (what the policy acts on, after hysteresis, dynamic thresholds and the storm guard)
//! are measured, not only the model's raw alert rule.

use std::collections::BTreeMap;

use super::metrics::NodeScores;
use crate::model::Risk;
use crate::policy::{Action, ClusterContext, NodeInput, PolicyConfig, PolicyError, RiskPolicy};

/// Replays `cfg`'s policy round by round over `nodes` (every node scored at a round is one
/// input of that round, under an idle cluster) and returns, per node, 1.0 at the rounds the
/// policy acted on it (at risk, and not merely watched: the storm guard and the holdout keep
/// data in place) and 0.0 elsewhere. Evaluated with threshold 0.5 under a 1-of-1 rule, the
/// result counts one alert per episode the policy acted on, re-firing once per horizon like
/// every other method.
pub fn replay_policy(
    nodes: &[NodeScores],
    cfg: PolicyConfig,
) -> Result<Vec<NodeScores>, PolicyError> {
    let mut policy = RiskPolicy::new(cfg)?;
    let mut rounds: BTreeMap<i64, Vec<(usize, usize)>> = BTreeMap::new();
    for (n, s) in nodes.iter().enumerate() {
        for i in 0..s.times.len() {
            rounds.entry(s.times[i]).or_default().push((n, i));
        }
    }
    let mut out: Vec<NodeScores> = nodes
        .iter()
        .map(|s| NodeScores {
            scores: vec![0.0; s.times.len()],
            ..s.clone()
        })
        .collect();
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, s)| (s.node.as_str(), i))
        .collect();
    for (t, members) in rounds {
        let inputs: Vec<NodeInput> = members
            .iter()
            .map(|&(n, i)| NodeInput {
                risk: Risk {
                    node: nodes[n].node.clone(),
                    at_ms: t,
                    probability: nodes[n].scores[i],
                    anomaly: f64::NAN,
                    reasons: Vec::new(),
                },
                data_bytes: 1,
            })
            .collect();
        let decision = policy.evaluate(&inputs, &ClusterContext::default());
        let at: BTreeMap<usize, usize> = members.iter().copied().collect();
        for d in decision.at_risk {
            if d.at_risk && d.action != Action::Watch {
                if let Some(&n) = index.get(d.node.as_str()) {
                    if let Some(&i) = at.get(&n) {
                        out[n].scores[i] = 1.0;
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_marks_what_the_policy_acts_on() {
        let node = |name: &str, scores: &[f64]| NodeScores {
            node: name.into(),
            times: (0..scores.len() as i64).collect(),
            scores: scores.to_vec(),
            failed_at: None,
            precursor: None,
        };
        let nodes = [
            node("a", &[0.1, 0.9, 0.9, 0.9, 0.4, 0.1]),
            node("b", &[0.1, 0.9, 0.1, 0.1, 0.1, 0.1]),
        ];
        let cfg = PolicyConfig {
            enter: 0.5,
            leave: 0.3,
            k: 2,
            n: 3,
            storm_min_nodes: 10,
            ..Default::default()
        };
        let out = replay_policy(&nodes, cfg).unwrap();
        // a: enters at its second round above 0.5, stays while above leave (0.4), leaves at 0.1.
        assert_eq!(out[0].scores, vec![0.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
        // b: a single spike never satisfies 2-of-3.
        assert!(out[1].scores.iter().all(|&v| v == 0.0));
    }
}
