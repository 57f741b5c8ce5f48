//! The control plane's settings: the `[control]` table of a metadata member's configuration.
//!
//! ```toml
//! [control]                              # defaults shown
//! heartbeat_interval_ms = 1000           # storage nodes heartbeat this often
//! lease_ms = 6000                        # a storage node's lease after an acknowledged heartbeat
//! grace_ms = 8000                        # silence before a node is declared Down (> lease)
//! suspect_after_ms = 2500                # silence before a node is Suspect (>= 2 heartbeats)
//! down_delay_ms = 300000                 # Down this long before its replicas are re-created
//! usage_interval_ms = 30000              # a node's usage is written at most this often
//! clock_drift = 0.01                     # bound on relative clock-rate error (rho)
//! liveness_tick_ms = 250                 # how often the leader looks for silent nodes
//! repair_interval_ms = 1000              # how often shards are checked for dead replicas
//! probe_interval_ms = 3000               # how often the leader probes every storage node
//! storage_call_timeout_ms = 3000         # deadline of one probe or checkpoint request
//! mover_interval_ms = 1000               # how often migrations are planned and advanced
//! move_timeout_ms = 3600000              # a move without progress this long is aborted
//! move_backoff_ms = 5000                 # wait after a shard's first aborted move
//! move_backoff_max_ms = 300000           # the doubling wait never exceeds this
//! max_moves = 8                          # moves in flight in the whole cluster
//! max_moves_in_per_node = 4              # moves in flight into one node
//! max_moves_out_per_node = 4             # moves in flight copying from one node
//! migration_history_per_shard = 4        # finished migration records kept per shard
//! handoff_timeout_ms = 5000              # a handed-off primary serves again after this
//! max_handoffs_per_pass = 8              # primaries of draining nodes handed off per pass
//! balance_interval_ms = 5000             # how often primaries are evened out over Up nodes (0: never)
//! max_balance_handoffs = 4               # primaries handed off per balancing round
//! max_balance_moves = 2                  # replica moves in flight to even out replicas by capacity (0: never)
//! health_samples_per_node = 720          # health samples the leader keeps per node (1 h at 5 s)
//! predict = true                         # the risk policy may drain at-risk nodes (`augur meta --predict off`)
//! risk_interval_ms = 5000                # how often the risk policy runs a round
//! storm_rack_min_nodes = 2               # a whole rack flagged trips the storm guard (racks this big)
//! failure_window_ms = 2592000000         # Down nodes this recent count towards the observed failure rate
//! capacity_interval_ms = 60000           # how often the capacity planner runs a round
//! capacity_horizon_days = 30             # how far ahead it projects used bytes and failures
//! capacity_min_headroom = 0.2            # alarm (and the hook) below this headroom after drains
//! capacity_history = 1440                # used-bytes samples kept for the growth slope (a day at 60 s)
//! capacity_min_history_ms = 3600000      # growth counts once the samples span this long
//! capacity_hook = ""                     # executable path or http:// URL asked for nodes ("": none)
//! capacity_hook_timeout_ms = 120000      # a hook call taking longer is killed / abandoned
//! capacity_hook_cooldown_ms = 1800000    # wait before asking again while the nodes asked for are missing
//!
//! [control.policy]                       # the risk policy (predictor `PolicyConfig`), defaults shown
//! enter = 0.5                            # risk counting towards the at-risk state ...
//! k = 2                                  # ... in k ...
//! n = 3                                  # ... of the last n scoring rounds
//! leave = 0.25                           # an at-risk node leaves the state below this
//! watch = 0.2                            # Suspect (no new replicas) from this risk
//! drain = 0.5                            # an at-risk node is drained from this risk
//! load_weight = 0.3                      # full cluster load raises thresholds by 30% (in odds)
//! backlog_weight = 0.5                   # a full migration backlog raises them by 50%
//! model_base_rate = 0.000136893          # failures per node-day the model was calibrated at
//! max_base_rate_factor = 4.0             # bound on the observed / calibrated failure-rate factor
//! storm_fraction = 0.05                  # storm guard: more than this fraction of nodes at risk ...
//! storm_min_nodes = 3                    # ... and more than this many freezes automated moves
//! holdout_fraction = 0.0                 # newly flagged nodes left in place to measure precision
//! horizon_ms = 86400000                  # the model's horizon (judges held-out nodes)
//! seed = 1                               # the holdout draw's seed
//! ```

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};

/// The control plane's timing and limits (see `docs/data-plane.md` "Control plane").
///
/// Safety rests on one inequality: a primary must stop serving before the leader can promote
/// another. A node's lease lasts `lease_ms` from when it *sent* its last acknowledged
/// heartbeat, on its own clock; the leader declares it Down only after `grace_ms` of silence
/// on its clock. With clock rates off by at most `clock_drift` (rho), `grace_ms` must exceed
/// `lease_ms (1 + rho) / (1 - rho) + heartbeat_interval_ms`, and validation refuses anything
/// less. Every other setting trades speed of reaction against load; none affects safety.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSettings {
    /// How often storage nodes heartbeat the leader.
    pub heartbeat_interval_ms: u64,
    /// A storage node's lease after an acknowledged heartbeat.
    pub lease_ms: u64,
    /// Silence after which the leader declares a node Down.
    pub grace_ms: u64,
    /// Silence after which a node is Suspect.
    pub suspect_after_ms: u64,
    /// How long a node stays Down before its replicas are re-created elsewhere.
    pub down_delay_ms: u64,
    /// A node's usage is written to its record at most this often.
    pub usage_interval_ms: u64,
    /// Bound on the relative error between clock rates (rho).
    pub clock_drift: f64,
    /// How often the leader compares each node's silence with the thresholds: a Down
    /// declaration comes at most this much after `grace_ms`.
    pub liveness_tick_ms: u64,
    /// How often the leader scans shards for replicas on Down nodes (also right after any
    /// node is declared Down).
    pub repair_interval_ms: u64,
    /// How often the leader probes every storage node directly for its replicas' states.
    pub probe_interval_ms: u64,
    /// Deadline of one probe or checkpoint request to a storage node.
    pub storage_call_timeout_ms: u64,
    /// How often the mover plans new moves and advances the ones in flight.
    pub mover_interval_ms: u64,
    /// A move that makes no progress (no step, no copied byte) for this long, on the
    /// leader's monotonic clock, is aborted (and retried). A large copy that keeps copying
    /// is never cut off.
    pub move_timeout_ms: u64,
    /// Wait before retrying a shard whose move aborted; doubles with every further abort.
    pub move_backoff_ms: u64,
    /// The most the retry wait grows to.
    pub move_backoff_max_ms: u64,
    /// Moves in flight in the whole cluster: bounds the copy traffic a failure can cause.
    pub max_moves: usize,
    /// Moves in flight into one node: its disk and network take the copies.
    pub max_moves_in_per_node: usize,
    /// Moves in flight copying from one node (the shard's primary, the usual copy source).
    pub max_moves_out_per_node: usize,
    /// Finished (committed or aborted) migration records kept per shard; older ones are
    /// deleted when a new move of the shard is planned, so the table stays bounded.
    pub migration_history_per_shard: usize,
    /// How long a primary asked to hand off waits for the configuration that replaces it
    /// before serving again (a hand-off whose metadata write failed ends by itself).
    pub handoff_timeout_ms: u64,
    /// Primaries on Draining nodes handed off per mover pass: each pauses its shard's
    /// requests briefly (clients retry), so a drain does not pause many shards at once.
    pub max_handoffs_per_pass: usize,
    /// How often, while nothing else moves, the leader hands primaries from nodes leading
    /// the most shards to secondaries leading fewer (`control::mover::balance`); 0 never
    /// does. Failovers and drains otherwise leave leadership, and so the client load, on
    /// whichever nodes took it over.
    pub balance_interval_ms: u64,
    /// Primaries handed off per balancing round: each pauses its shard's requests briefly.
    pub max_balance_handoffs: usize,
    /// Balancing moves in flight at once (`control::mover::balance`), which give a node
    /// holding less than its capacity share of replicas (new, replaced, undrained) replicas
    /// from the nodes holding the most, while nothing else moves; 0 never plans any.
    pub max_balance_moves: usize,
    /// Health samples the leader keeps in memory per storage node (the latest; older ones
    /// are dropped). 0 keeps none.
    pub health_samples_per_node: usize,
    /// Whether the risk policy runs: marks at-risk nodes Suspect and Draining so their data
    /// moves before they fail. Off, the cluster only reacts to failures (re-replication after
    /// a node is Down), which is what `augur bench failover --predict off` measures; the
    /// decisions already recorded stay until an operator changes them.
    pub predict: bool,
    /// How often the risk policy runs a round over every live node's latest risk. A node's
    /// risk counts once per scoring round of its own however often this runs (see
    /// `control::risk`), so this bounds only how late a decision is taken.
    pub risk_interval_ms: u64,
    /// The storm guard also trips when every live node of one rack is at risk at once (a
    /// shared cause: power, network, cooling), for racks of at least this many live nodes.
    pub storm_rack_min_nodes: usize,
    /// Nodes declared Down within this window count as the observed failures the policy's
    /// base-rate correction compares with the model's calibration.
    pub failure_window_ms: u64,
    /// The risk policy's thresholds, hysteresis, storm guard and holdout. The predictor's
    /// defaults, except `drain = 0.5`: what `PolicyConfig::for_model` gives for the shipped
    /// node model (its alert threshold is below 0.5), so a node the shipped model calls more
    /// likely than not to fail within its horizon is emptied, not only watched. The
    /// predictor's generic 0.7 left the simulated fail-slow node (calibrated risk 0.65-0.7)
    /// Suspect until it died, which is the failure this system exists to prevent.
    pub policy: augur_predictor::policy::PolicyConfig,
    /// How often the capacity planner (`control::capacity`) estimates the capacity needed
    /// `capacity_horizon_days` ahead. Its inputs change slowly (usage, risk); a round costs
    /// one read of the node table.
    pub capacity_interval_ms: u64,
    /// How far ahead the planner projects used-bytes growth and predicted failures, in days:
    /// about the time it takes to buy and rack new nodes.
    pub capacity_horizon_days: u64,
    /// The headroom (fraction of the capacity left after draining the at-risk nodes that
    /// the projected data would not fill) below which the planner raises its alarm and asks
    /// the hook for nodes. In `0..1`.
    pub capacity_min_headroom: f64,
    /// Used-bytes samples (one per round) the planner keeps for its growth slope, cluster-
    /// wide and per node: the slope's window.
    pub capacity_history: usize,
    /// The samples must span at least this long before growth is extrapolated: a slope over
    /// minutes multiplied by a 30-day horizon would turn one burst of writes into an alarm.
    /// Until then growth counts as zero (and the view says it is unknown).
    pub capacity_min_history_ms: u64,
    /// What the planner calls to ask for nodes: an absolute path to an executable (run with
    /// the JSON request on stdin and in `AUGUR_CAPACITY_REQUEST`) or an `http://` URL (the
    /// request POSTed as JSON). Empty: no hook (the alarm is still raised).
    pub capacity_hook: String,
    /// Deadline of one hook call: an executable still running is killed (its process
    /// group), an HTTP call is abandoned; either counts as a failure.
    pub capacity_hook_timeout_ms: u64,
    /// After a call, the hook is called again only once the nodes it asked for have
    /// registered, or this long has passed (a failed call, or nodes that never came).
    pub capacity_hook_cooldown_ms: u64,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            heartbeat_interval_ms: 1_000,
            lease_ms: 6_000,
            grace_ms: 8_000,
            suspect_after_ms: 2_500,
            down_delay_ms: 300_000,
            usage_interval_ms: 30_000,
            clock_drift: 0.01,
            liveness_tick_ms: 250,
            repair_interval_ms: 1_000,
            probe_interval_ms: 3_000,
            storage_call_timeout_ms: 3_000,
            mover_interval_ms: 1_000,
            move_timeout_ms: 3_600_000,
            move_backoff_ms: 5_000,
            move_backoff_max_ms: 300_000,
            max_moves: 8,
            max_moves_in_per_node: 4,
            max_moves_out_per_node: 4,
            migration_history_per_shard: 4,
            handoff_timeout_ms: 5_000,
            max_handoffs_per_pass: 8,
            balance_interval_ms: 5_000,
            max_balance_handoffs: 4,
            max_balance_moves: 2,
            health_samples_per_node: 720,
            predict: true,
            risk_interval_ms: 5_000,
            storm_rack_min_nodes: 2,
            failure_window_ms: 30 * 86_400_000,
            policy: augur_predictor::policy::PolicyConfig {
                drain: 0.5,
                ..Default::default()
            },
            capacity_interval_ms: 60_000,
            capacity_horizon_days: 30,
            capacity_min_headroom: 0.2,
            capacity_history: 1_440,
            capacity_min_history_ms: 3_600_000,
            capacity_hook: String::new(),
            capacity_hook_timeout_ms: 120_000,
            capacity_hook_cooldown_ms: 1_800_000,
        }
    }
}

fn invalid(setting: &'static str, detail: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        setting,
        detail: detail.to_string(),
    }
}

impl ControlSettings {
    /// Refuses timings under which a deposed primary could still serve when another is
    /// promoted, and zero intervals or limits that would stop the control plane.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..0.5).contains(&self.clock_drift) {
            return Err(invalid("control.clock_drift", "must be in 0..0.5"));
        }
        if self.heartbeat_interval_ms == 0 || self.lease_ms <= self.heartbeat_interval_ms {
            return Err(invalid(
                "control.lease_ms",
                "must exceed heartbeat_interval_ms (> 0)",
            ));
        }
        let rho = self.clock_drift;
        let min_grace =
            self.lease_ms as f64 * (1.0 + rho) / (1.0 - rho) + self.heartbeat_interval_ms as f64;
        if (self.grace_ms as f64) <= min_grace {
            return Err(invalid(
                "control.grace_ms",
                format!(
                    "must exceed lease_ms (1 + rho) / (1 - rho) + heartbeat_interval_ms = \
                     {min_grace:.0} ms"
                ),
            ));
        }
        // One heartbeat late is not silence: below two intervals, nodes would flap to
        // Suspect, and moves whose commit waits for members heard within this would wait.
        if self.suspect_after_ms >= self.grace_ms
            || self.suspect_after_ms < self.heartbeat_interval_ms.saturating_mul(2)
        {
            return Err(invalid(
                "control.suspect_after_ms",
                "must be at least 2 x heartbeat_interval_ms and below grace_ms",
            ));
        }
        if self.liveness_tick_ms == 0 || self.liveness_tick_ms >= self.suspect_after_ms {
            return Err(invalid(
                "control.liveness_tick_ms",
                "must be at least 1 and below suspect_after_ms",
            ));
        }
        let positive = [
            ("control.repair_interval_ms", self.repair_interval_ms),
            ("control.probe_interval_ms", self.probe_interval_ms),
            (
                "control.storage_call_timeout_ms",
                self.storage_call_timeout_ms,
            ),
            ("control.mover_interval_ms", self.mover_interval_ms),
            ("control.move_timeout_ms", self.move_timeout_ms),
            ("control.move_backoff_ms", self.move_backoff_ms),
            ("control.max_moves", self.max_moves as u64),
            (
                "control.max_moves_in_per_node",
                self.max_moves_in_per_node as u64,
            ),
            (
                "control.max_moves_out_per_node",
                self.max_moves_out_per_node as u64,
            ),
            (
                "control.migration_history_per_shard",
                self.migration_history_per_shard as u64,
            ),
            ("control.handoff_timeout_ms", self.handoff_timeout_ms),
            (
                "control.max_handoffs_per_pass",
                self.max_handoffs_per_pass as u64,
            ),
            (
                "control.max_balance_handoffs",
                self.max_balance_handoffs as u64,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        if self.risk_interval_ms == 0 {
            return Err(invalid("control.risk_interval_ms", "must be at least 1"));
        }
        if self.failure_window_ms == 0 {
            return Err(invalid("control.failure_window_ms", "must be at least 1"));
        }
        if self.storm_rack_min_nodes < 2 {
            return Err(invalid(
                "control.storm_rack_min_nodes",
                "must be at least 2 (one node flagged is not a rack-wide storm)",
            ));
        }
        if let Err(e) = augur_predictor::policy::RiskPolicy::new(self.policy.clone()) {
            return Err(invalid("control.policy", e));
        }
        if self.move_backoff_max_ms < self.move_backoff_ms {
            return Err(invalid(
                "control.move_backoff_max_ms",
                "must be at least move_backoff_ms",
            ));
        }
        self.validate_capacity()
    }

    /// The capacity planner's settings: positive intervals, a headroom fraction in `0..1`,
    /// and a hook that can be called (see [`crate::control::capacity::hook::Hook::parse`]).
    fn validate_capacity(&self) -> Result<(), ConfigError> {
        let positive = [
            ("control.capacity_interval_ms", self.capacity_interval_ms),
            ("control.capacity_horizon_days", self.capacity_horizon_days),
            ("control.capacity_history", self.capacity_history as u64),
            (
                "control.capacity_hook_timeout_ms",
                self.capacity_hook_timeout_ms,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        if self.capacity_horizon_days > 36_500 {
            return Err(invalid(
                "control.capacity_horizon_days",
                "must be at most 36500 (a century)",
            ));
        }
        if !(0.0..1.0).contains(&self.capacity_min_headroom) {
            return Err(invalid(
                "control.capacity_min_headroom",
                "must be a fraction in 0..1",
            ));
        }
        if self.capacity_history < 2 {
            return Err(invalid(
                "control.capacity_history",
                "must be at least 2 (a slope needs two samples)",
            ));
        }
        let window = (self.capacity_history as u64).saturating_mul(self.capacity_interval_ms);
        if window < self.capacity_min_history_ms {
            return Err(invalid(
                "control.capacity_min_history_ms",
                format!(
                    "must be at most capacity_history x capacity_interval_ms ({window} ms): \
                     no history would ever span it, and growth would never count"
                ),
            ));
        }
        if self.capacity_hook_cooldown_ms < self.capacity_interval_ms {
            return Err(invalid(
                "control.capacity_hook_cooldown_ms",
                "must be at least capacity_interval_ms: below it the hook is asked again every round",
            ));
        }
        if let Err(e) = crate::control::capacity::hook::Hook::parse(&self.capacity_hook) {
            return Err(invalid("control.capacity_hook", e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &ControlSettings) -> &'static str {
        match s.validate() {
            Err(ConfigError::Invalid { setting, .. }) => setting,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A data client left at its defaults must ride out what these defaults make a failure
    /// cost: a dead primary (its lease, then the grace period and a liveness tick before it
    /// is declared Down, then a promotion) and a hand-off nobody follows (the primary's
    /// pause, then its re-election). A shorter deadline turns each into failed writes.
    #[test]
    fn the_data_clients_default_deadline_outlasts_a_failover() {
        let s = ControlSettings::default();
        let dead_primary = s.lease_ms + s.grace_ms + s.liveness_tick_ms + 1_000;
        let stuck_handoff = s.handoff_timeout_ms + s.storage_call_timeout_ms;
        let deadline = augur_client::DataConfig::default().request_timeout;
        assert!(
            deadline > std::time::Duration::from_millis(dead_primary.max(stuck_handoff)),
            "{deadline:?} against {dead_primary} ms and {stuck_handoff} ms"
        );
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(ControlSettings::default().validate().is_ok());
        let mut s = ControlSettings {
            grace_ms: 7_000,
            ..Default::default()
        };
        assert_eq!(refused(&s), "control.grace_ms");
        s = ControlSettings {
            liveness_tick_ms: 2_500,
            ..Default::default()
        };
        assert_eq!(refused(&s), "control.liveness_tick_ms");
        s = ControlSettings {
            suspect_after_ms: 1_500,
            liveness_tick_ms: 100,
            ..Default::default()
        };
        assert_eq!(
            refused(&s),
            "control.suspect_after_ms",
            "below two heartbeats"
        );
        s = ControlSettings {
            max_moves: 0,
            ..Default::default()
        };
        assert_eq!(refused(&s), "control.max_moves");
        s = ControlSettings {
            move_backoff_max_ms: 1,
            ..Default::default()
        };
        assert_eq!(refused(&s), "control.move_backoff_max_ms");
    }

    #[test]
    fn a_partial_table_keeps_the_other_defaults() {
        let s: ControlSettings = toml::from_str("down_delay_ms = 2000\nmax_moves = 3").unwrap();
        assert_eq!(s.down_delay_ms, 2_000);
        assert_eq!(s.max_moves, 3);
        assert_eq!(s.grace_ms, 8_000);
        assert!(toml::from_str::<ControlSettings>("max_movez = 3").is_err());
    }

    #[test]
    fn capacity_settings_are_checked_at_load() {
        let s: ControlSettings = toml::from_str(
            "capacity_interval_ms = 1000\ncapacity_min_headroom = 0.3\n\
             capacity_min_history_ms = 600000\n\
             capacity_hook = \"http://127.0.0.1:9/scale\"",
        )
        .unwrap();
        assert!(s.validate().is_ok());
        assert_eq!(s.capacity_horizon_days, 30, "the rest keeps its defaults");
        let bad = |f: fn(&mut ControlSettings)| {
            let mut s = ControlSettings::default();
            f(&mut s);
            refused(&s)
        };
        assert_eq!(
            bad(|s| s.capacity_min_headroom = 1.0),
            "control.capacity_min_headroom"
        );
        assert_eq!(
            bad(|s| s.capacity_min_headroom = f64::NAN),
            "control.capacity_min_headroom"
        );
        assert_eq!(
            bad(|s| s.capacity_interval_ms = 0),
            "control.capacity_interval_ms"
        );
        assert_eq!(
            bad(|s| s.capacity_horizon_days = 0),
            "control.capacity_horizon_days"
        );
        assert_eq!(bad(|s| s.capacity_history = 1), "control.capacity_history");
        // A day of history at 1 s rounds spans 24 min: a 1 h minimum is never reached.
        assert_eq!(
            bad(|s| s.capacity_interval_ms = 1_000),
            "control.capacity_min_history_ms"
        );
        assert_eq!(
            bad(|s| s.capacity_hook_cooldown_ms = 0),
            "control.capacity_hook_cooldown_ms"
        );
        assert_eq!(
            bad(|s| s.capacity_hook = "https://scaler.example/up".into()),
            "control.capacity_hook"
        );
        assert_eq!(
            bad(|s| s.capacity_hook = "relative/hook.sh".into()),
            "control.capacity_hook"
        );
        assert_eq!(
            bad(|s| s.capacity_hook = "/nonexistent/augur-hook".into()),
            "control.capacity_hook"
        );
    }

    #[test]
    fn the_risk_policy_is_configured_in_its_own_table() {
        let s: ControlSettings =
            toml::from_str("predict = false\n[policy]\nk = 1\nn = 2\nstorm_min_nodes = 1").unwrap();
        assert!(!s.predict);
        assert_eq!(
            (s.policy.k, s.policy.n, s.policy.storm_min_nodes),
            (1, 2, 1)
        );
        assert_eq!(s.policy.enter, 0.5, "the rest keeps its defaults");
        assert!(s.validate().is_ok());
        let bad = ControlSettings {
            policy: augur_predictor::policy::PolicyConfig {
                k: 3,
                n: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(refused(&bad), "control.policy");
        let bad = ControlSettings {
            storm_rack_min_nodes: 1,
            ..Default::default()
        };
        assert_eq!(refused(&bad), "control.storm_rack_min_nodes");
    }
}
