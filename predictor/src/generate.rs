//! Synthetic traces: a node simulator and a cluster-level failure plan.
//!
//! The model is documented in `predictor/README.md` ("Synthetic trace model"); keep the two in
//! step. Every node draws from its own RNG stream derived from `(seed, node index)`, so a trace
//! is bit-for-bit reproducible whatever the number of threads.

use std::path::Path;

use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::sample::{FailureRecord, HealthSample};
use crate::trace::{write_failures, SampleWriter, TraceError};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
const YEAR_DAYS: f64 = 365.25;

/// Settings of one generated trace. Defaults are the natural-rate cluster of the README.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GeneratorConfig {
    /// Number of storage nodes.
    pub nodes: usize,
    /// Trace length in days.
    pub days: f64,
    /// Nominal sample interval, ms.
    pub interval_ms: i64,
    /// Master seed; every random draw derives from it.
    pub seed: u64,
    /// Trace start, ms since the epoch (a Monday 00:00 UTC by default).
    pub start_ms: i64,
    /// Fleet-average annual failure rate at natural rate (cohorts scale it).
    pub afr: f64,
    /// Multiplies the failure hazard, to make failure-rich training / evaluation traces.
    pub failure_boost: f64,
    /// Fraction of failures with no precursor at all.
    pub sudden_fraction: f64,
    /// False precursors (healthy, recovering episodes) per expected failure.
    pub false_precursor_ratio: f64,
    /// Nodes per rack; racks share correlated events.
    pub rack_size: usize,
    /// Correlated rack events per rack per day.
    pub rack_event_rate_per_day: f64,
    /// Probability that any one sample is lost.
    pub missing_rate: f64,
    /// Agent outages (gaps of 5-90 min) per node per day.
    pub gap_rate_per_day: f64,
    /// Timestamp jitter, as a fraction of the interval (standard deviation).
    pub jitter_frac: f64,
    /// Nodes per output file.
    pub nodes_per_file: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            nodes: 100,
            days: 30.0,
            interval_ms: MINUTE_MS,
            seed: 1,
            // 2025-11-24 00:00 UTC, a Monday.
            start_ms: 1_763_942_400_000,
            afr: 0.05,
            failure_boost: 1.0,
            sudden_fraction: 0.4,
            false_precursor_ratio: 4.0,
            rack_size: 20,
            rack_event_rate_per_day: 1.0 / 14.0,
            missing_rate: 0.003,
            gap_rate_per_day: 1.0 / 7.0,
            jitter_frac: 0.02,
            nodes_per_file: 25,
        }
    }
}

/// What goes wrong on a node, as a precursor (before a failure), a false precursor (recovers)
/// or an injected fault in the simulated agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Latency grows while throughput falls: a dying disk retrying.
    FailSlowDisk,
    /// Media / memory / PCIe errors in the kernel log, accelerating.
    ErrorBurst,
    /// Temperature climbs, with throttling messages.
    ThermalRunaway,
    /// A power supply drops in and out.
    PsuFlapping,
    /// NIC or link degradation: loss, errors, RTT.
    PacketLoss,
    /// Rack cooling trouble: every node of a rack warms (benign).
    RackCooling,
    /// Top-of-rack switch trouble: every node of a rack sees loss (benign).
    RackNetwork,
    /// The node dies with no warning.
    SuddenDeath,
}

impl FaultKind {
    /// Precursor kinds a failing disk / node can show.
    pub const PRECURSORS: [FaultKind; 5] = [
        FaultKind::FailSlowDisk,
        FaultKind::ErrorBurst,
        FaultKind::ThermalRunaway,
        FaultKind::PsuFlapping,
        FaultKind::PacketLoss,
    ];

    /// Snake-case name used in `failures.jsonl` causes and CLI flags.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::FailSlowDisk => "fail_slow_disk",
            FaultKind::ErrorBurst => "error_burst",
            FaultKind::ThermalRunaway => "thermal_runaway",
            FaultKind::PsuFlapping => "psu_flapping",
            FaultKind::PacketLoss => "packet_loss",
            FaultKind::RackCooling => "rack_cooling",
            FaultKind::RackNetwork => "rack_network",
            FaultKind::SuddenDeath => "sudden",
        }
    }
}

/// How an episode's severity evolves over time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Shape {
    /// Rises from 0 at `start` to `peak` at `end` as `((t-start)/(end-start))^gamma`, then
    /// stays (a real precursor ends with the failure; an injected fault persists).
    Ramp {
        /// Curvature: < 1 rises early then plateaus, > 1 stays quiet then accelerates.
        gamma: f64,
    },
    /// Rises linearly to `peak` at `top` then falls back to 0 at `end` (recovers).
    Bump {
        /// Time of the maximum.
        top_ms: i64,
    },
}

/// One fault episode on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Episode {
    /// What goes wrong.
    pub kind: FaultKind,
    /// When it begins.
    pub start_ms: i64,
    /// When the ramp completes / the bump is over.
    pub end_ms: i64,
    /// Maximum severity, 1.0 = the severity reached right before a failure.
    pub peak: f64,
    /// Time profile.
    pub shape: Shape,
}

impl Episode {
    /// Severity in 0..=peak at time `t`.
    pub fn severity(&self, t: i64) -> f64 {
        if t < self.start_ms {
            return 0.0;
        }
        match self.shape {
            Shape::Ramp { gamma } => {
                let span = (self.end_ms - self.start_ms).max(1) as f64;
                let x = ((t - self.start_ms) as f64 / span).clamp(0.0, 1.0);
                self.peak * x.powf(gamma)
            }
            Shape::Bump { top_ms } => {
                if t >= self.end_ms {
                    0.0
                } else if t <= top_ms {
                    self.peak * (t - self.start_ms) as f64 / (top_ms - self.start_ms).max(1) as f64
                } else {
                    self.peak * (self.end_ms - t) as f64 / (self.end_ms - top_ms).max(1) as f64
                }
            }
        }
    }
}

/// A hardware generation: different baselines, failure rates and sensors.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Cohort {
    /// Name in the README.
    pub name: &'static str,
    /// Idle read latency, ms.
    pub read_lat_ms: f64,
    /// Idle write latency, ms.
    pub write_lat_ms: f64,
    /// Device bandwidth at full utilisation, MB/s.
    pub max_mbps: f64,
    /// Disk utilisation per unit of load.
    pub io_per_load: f64,
    /// Idle temperature, °C.
    pub temp_base: f64,
    /// Failure rate relative to the fleet average.
    pub afr_mult: f64,
    /// Weibull shape (> 1: wear-out).
    pub weibull_shape: f64,
    /// Probability a node exposes a temperature sensor.
    pub p_temp_sensor: f64,
    /// Probability a node exposes power-supply status.
    pub p_psu_sensor: f64,
}

/// The hardware cohorts of the simulated fleet.
pub const COHORTS: [Cohort; 4] = [
    Cohort {
        name: "hdd-gen1",
        read_lat_ms: 6.0,
        write_lat_ms: 9.0,
        max_mbps: 180.0,
        io_per_load: 0.75,
        temp_base: 34.0,
        afr_mult: 1.6,
        weibull_shape: 1.4,
        p_temp_sensor: 0.9,
        p_psu_sensor: 0.7,
    },
    Cohort {
        name: "hdd-gen2",
        read_lat_ms: 4.5,
        write_lat_ms: 7.0,
        max_mbps: 250.0,
        io_per_load: 0.6,
        temp_base: 32.0,
        afr_mult: 1.0,
        weibull_shape: 1.2,
        p_temp_sensor: 0.95,
        p_psu_sensor: 0.9,
    },
    Cohort {
        name: "ssd-sata",
        read_lat_ms: 0.35,
        write_lat_ms: 0.8,
        max_mbps: 520.0,
        io_per_load: 0.45,
        temp_base: 38.0,
        afr_mult: 0.7,
        weibull_shape: 1.1,
        p_temp_sensor: 0.8,
        p_psu_sensor: 0.6,
    },
    Cohort {
        name: "ssd-nvme",
        read_lat_ms: 0.09,
        write_lat_ms: 0.03,
        max_mbps: 2800.0,
        io_per_load: 0.35,
        temp_base: 42.0,
        afr_mult: 0.6,
        weibull_shape: 1.0,
        p_temp_sensor: 0.98,
        p_psu_sensor: 0.95,
    },
];

/// Static description of one simulated node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeProfile {
    /// Node id, e.g. `s-0007`.
    pub name: String,
    /// Rack index.
    pub rack: usize,
    /// Index into [`COHORTS`].
    pub cohort: usize,
    /// Mean load level of this node's tenants, 0..1.
    pub load_level: f64,
    /// Resident memory fraction at idle.
    pub mem_base: f64,
    /// Baseline RTT to peers, ms.
    pub rtt_ms: f64,
    /// Whether a temperature sensor is visible.
    pub has_temp: bool,
    /// Whether power-supply status is visible.
    pub has_psu: bool,
    /// Time zone offset of the tenants' daily cycle, hours.
    pub tz_hours: f64,
}

/// The fleet-wide baseline shift part-way through a trace (workload change, firmware update).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drift {
    /// When the shift happens.
    pub at_ms: i64,
    /// Load multiplier after the shift.
    pub load_mult: f64,
    /// Latency multiplier per cohort after the shift.
    pub latency_mult: [f64; 4],
}

/// Simulates one node sample by sample, given its profile and fault episodes.
///
/// Shared by the trace generator and the agent's simulated source so that a demo node and a
/// training trace are the same physics.
#[derive(Debug, Clone)]
pub struct NodeSim {
    /// The node.
    pub profile: NodeProfile,
    /// Active and future episodes.
    pub episodes: Vec<Episode>,
    /// Fleet drift, if any.
    pub drift: Option<Drift>,
    rng: StdRng,
    load_noise: f64,
    psu_down: bool,
}

impl NodeSim {
    /// A simulator with its own RNG stream.
    pub fn new(profile: NodeProfile, seed: u64) -> Self {
        NodeSim {
            profile,
            episodes: Vec::new(),
            drift: None,
            rng: StdRng::seed_from_u64(seed),
            load_noise: 0.0,
            psu_down: false,
        }
    }

    /// A random healthy node profile.
    pub fn random_profile(name: String, rack: usize, rng: &mut impl Rng) -> NodeProfile {
        let cohort = rng.gen_range(0..COHORTS.len());
        let c = &COHORTS[cohort];
        NodeProfile {
            name,
            rack,
            cohort,
            load_level: rng.gen_range(0.25..0.85),
            mem_base: rng.gen_range(0.3..0.7),
            rtt_ms: rng.gen_range(0.15..0.6),
            has_temp: rng.gen_bool(c.p_temp_sensor),
            has_psu: rng.gen_bool(c.p_psu_sensor),
            tz_hours: [0.0, 0.0, 1.0, -5.0, 8.0][rng.gen_range(0..5)],
        }
    }

    /// The sample at time `t` (ms), `interval_ms` after the previous one.
    pub fn sample(&mut self, t: i64, interval_ms: i64) -> HealthSample {
        let c = COHORTS[self.profile.cohort];
        let minutes = interval_ms as f64 / MINUTE_MS as f64;
        let rng = &mut self.rng;

        // Load: daily and weekly cycles around the tenant level, with AR(1) noise whose
        // memory is about an hour regardless of the sampling interval.
        let hours = t as f64 / HOUR_MS as f64 + self.profile.tz_hours;
        let hour_of_day = hours.rem_euclid(24.0);
        let day_of_week = ((hours / 24.0).floor() as i64).rem_euclid(7);
        let daily = 0.5 + 0.5 * (std::f64::consts::TAU * (hour_of_day - 8.0) / 24.0).sin();
        let weekly = if day_of_week >= 5 { 0.65 } else { 1.0 };
        let phi = (-minutes / 60.0).exp();
        self.load_noise = phi * self.load_noise + (1.0 - phi * phi).sqrt() * 0.06 * gauss(rng);
        let (load_mult, lat_mult) = match &self.drift {
            Some(d) if t >= d.at_ms => (d.load_mult, d.latency_mult[self.profile.cohort]),
            _ => (1.0, 1.0),
        };
        let load = (self.profile.load_level * (0.35 + 0.65 * daily) * weekly * load_mult
            + self.load_noise)
            .clamp(0.02, 0.98);

        let mut cpu = 0.04 + 0.8 * load + 0.03 * gauss(rng);
        let mem = self.profile.mem_base + 0.15 * load + 0.01 * gauss(rng);
        let mut disk_util = c.io_per_load * load + 0.03 * gauss(rng);
        let mut lat_factor = 1.0;
        let mut tput_factor = 1.0;
        let mut err_rate = 0.003; // kernel err lines per minute on a healthy node
        let mut net_err_rate = 0.01;
        let mut loss = 0.02 * rng.gen::<f64>().powi(4);
        let mut rtt = self.profile.rtt_ms * (1.0 + 0.4 * load) * (1.0 + 0.1 * gauss(rng)).max(0.5);
        let mut temp = c.temp_base + 12.0 * cpu + 0.5 * gauss(rng);
        let mut psu_flap_p = 0.0;

        for ep in &self.episodes {
            let s = ep.severity(t);
            if s <= 0.0 {
                continue;
            }
            match ep.kind {
                FaultKind::FailSlowDisk => {
                    lat_factor *= 1.0 + 5.0 * s;
                    if rng.gen_bool((0.25 * s).min(1.0)) {
                        lat_factor *= 1.0 + 4.0 * s;
                    }
                    disk_util += 0.15 * s;
                    tput_factor *= 1.0 - 0.4 * s;
                    err_rate += 0.05 * s;
                }
                FaultKind::ErrorBurst => {
                    err_rate += 2.0 * s * s + 0.2 * s;
                    lat_factor *= 1.0 + 0.3 * s;
                }
                FaultKind::ThermalRunaway => {
                    temp += 25.0 * s;
                    cpu += 0.08 * s;
                    err_rate += 0.3 * s;
                }
                FaultKind::PsuFlapping => {
                    psu_flap_p = f64::max(psu_flap_p, 0.35 * s);
                    err_rate += 0.4 * s;
                    net_err_rate += 0.5 * s;
                }
                FaultKind::PacketLoss => {
                    loss += 4.0 * s;
                    net_err_rate += 15.0 * s;
                    rtt += 2.5 * s;
                }
                FaultKind::RackCooling => {
                    temp += 7.0 * s;
                }
                FaultKind::RackNetwork => {
                    loss += 1.5 * s;
                    rtt += 2.0 * s;
                    net_err_rate += 3.0 * s;
                }
                FaultKind::SuddenDeath => {}
            }
        }

        let disk_util = disk_util.clamp(0.0, 0.97);
        // M/M/1-like queueing: latency grows as the device saturates.
        let queue = 1.0 / (1.0 - 0.9 * disk_util);
        let read_lat = c.read_lat_ms * lat_mult * queue * lat_factor * (0.15 * gauss(rng)).exp();
        let write_lat = c.write_lat_ms * lat_mult * queue * lat_factor * (0.15 * gauss(rng)).exp();
        let mbps = c.max_mbps * disk_util * tput_factor * (0.15 * gauss(rng)).exp();
        let err_log_count = poisson(rng, err_rate * minutes);
        let net_errors = poisson(rng, net_err_rate * minutes);
        let psu_ok = if self.profile.has_psu {
            // Flapping: stays down for a sample or two, comes back.
            if self.psu_down {
                self.psu_down = rng.gen_bool(0.3);
            } else if psu_flap_p > 0.0 {
                self.psu_down = rng.gen_bool(psu_flap_p.min(1.0));
            }
            Some(!self.psu_down)
        } else {
            None
        };

        HealthSample {
            node: self.profile.name.clone(),
            ts_ms: t,
            cpu_util: Some(round(cpu.clamp(0.0, 1.0), 3)),
            mem_util: Some(round(mem.clamp(0.0, 1.0), 3)),
            disk_read_lat_ms: Some(round(read_lat, 3)),
            disk_write_lat_ms: Some(round(write_lat, 3)),
            disk_read_mbps: Some(round(0.6 * mbps, 2)),
            disk_write_mbps: Some(round(0.4 * mbps, 2)),
            disk_util: Some(round(disk_util, 3)),
            net_rtt_ms: Some(round(rtt.max(0.01), 3)),
            net_loss_pct: Some(round(loss.clamp(0.0, 100.0), 3)),
            net_errors: Some(net_errors),
            err_log_count: Some(err_log_count),
            temp_c: self.profile.has_temp.then(|| round(temp, 1)),
            psu_ok,
            tcp_retrans_pct: None,
            smart: None,
        }
    }
}

fn gauss(rng: &mut impl Rng) -> f64 {
    rng.sample(StandardNormal)
}

fn poisson(rng: &mut impl Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    match Poisson::new(lambda) {
        Ok(p) => p.sample(rng) as u64,
        Err(_) => 0,
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Log-uniform draw in `[lo, hi]`: lead times and durations span orders of magnitude.
fn log_uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    (lo.ln() + rng.gen::<f64>() * (hi.ln() - lo.ln())).exp()
}

/// The cluster-level plan of a trace: who fails when and why, which episodes happen where.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Settings used.
    pub config: GeneratorConfig,
    /// Node profiles.
    pub profiles: Vec<NodeProfile>,
    /// Failures within the trace.
    pub failures: Vec<FailureRecord>,
    /// Episodes per node (precursors, false precursors, rack events).
    pub episodes: Vec<Vec<Episode>>,
    /// Fleet drift.
    pub drift: Drift,
    /// Expected number of failures under the configured hazard.
    pub expected_failures: f64,
    /// Number of false-precursor episodes placed.
    pub false_precursors: usize,
}

impl Plan {
    /// Draws the plan from the master seed.
    pub fn new(config: &GeneratorConfig) -> Plan {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let duration_ms = (config.days * DAY_MS as f64) as i64;
        let start = config.start_ms;
        let end = start + duration_ms;
        let profiles: Vec<NodeProfile> = (0..config.nodes)
            .map(|i| {
                NodeSim::random_profile(format!("s-{i:04}"), i / config.rack_size.max(1), &mut rng)
            })
            .collect();
        let mut episodes: Vec<Vec<Episode>> = vec![Vec::new(); config.nodes];
        let mut failures = Vec::new();
        let mut expected_failures = 0.0;
        let years = config.days / YEAR_DAYS;
        for (i, p) in profiles.iter().enumerate() {
            // Weibull lifetime conditioned on the node's current age; the hazard boost
            // multiplies cumulative hazard. Scale chosen so P(fail within a year) = AFR at age 0.
            let c = &COHORTS[p.cohort];
            let afr = (config.afr * c.afr_mult).clamp(1e-6, 0.99);
            let k = c.weibull_shape;
            let scale = 1.0 / (-(1.0 - afr).ln()).powf(1.0 / k);
            let age: f64 = rng.gen_range(0.0..4.0);
            let h0 = (age / scale).powf(k);
            let h1 = ((age + years) / scale).powf(k);
            expected_failures += 1.0 - (-(h1 - h0) * config.failure_boost).exp();
            let u: f64 = rng.gen::<f64>().max(1e-300);
            let ttf_years = scale * (h0 - u.ln() / config.failure_boost).powf(1.0 / k) - age;
            let fail_at = start + (ttf_years * YEAR_DAYS * DAY_MS as f64) as i64;
            if fail_at >= end {
                continue;
            }
            let sudden = rng.gen_bool(config.sudden_fraction.clamp(0.0, 1.0));
            let (cause, onset) = if sudden {
                (FaultKind::SuddenDeath, None)
            } else {
                let kind = FaultKind::PRECURSORS[rng.gen_range(0..FaultKind::PRECURSORS.len())];
                // Lead times: log-normal, median 8 h, clamped to 10 min .. 5 days; about 4% of
                // precursors give under an hour of warning, about 10% over two days.
                let lead_min =
                    (8.0 * 60.0 * (1.2 * gauss(&mut rng)).exp()).clamp(10.0, 5.0 * 24.0 * 60.0);
                let onset = fail_at - (lead_min * MINUTE_MS as f64) as i64;
                episodes[i].push(Episode {
                    kind,
                    start_ms: onset,
                    end_ms: fail_at,
                    peak: 1.0,
                    shape: Shape::Ramp {
                        gamma: rng.gen_range(0.35..1.0),
                    },
                });
                (kind, Some(onset))
            };
            failures.push(FailureRecord {
                node: p.name.clone(),
                failed_at_ms: fail_at,
                cause: Some(cause.name().to_string()),
                precursor_onset_ms: onset,
            });
        }

        // False precursors: same kinds, weaker, and they recover.
        let lambda = config.false_precursor_ratio * expected_failures;
        let false_precursors = if lambda > 0.0 {
            poisson(&mut rng, lambda)
        } else {
            0
        } as usize;
        for _ in 0..false_precursors {
            let i = rng.gen_range(0..config.nodes.max(1));
            if i >= config.nodes {
                break;
            }
            let dur = (log_uniform(&mut rng, 30.0, 24.0 * 60.0) * MINUTE_MS as f64) as i64;
            let s = start + rng.gen_range(0..duration_ms.max(1));
            let top = s + (dur as f64 * rng.gen_range(0.3..0.8)) as i64;
            episodes[i].push(Episode {
                kind: FaultKind::PRECURSORS[rng.gen_range(0..FaultKind::PRECURSORS.len())],
                start_ms: s,
                end_ms: s + dur,
                peak: rng.gen_range(0.1..0.5),
                shape: Shape::Bump { top_ms: top },
            });
        }

        // Correlated rack events: every node of the rack sees the same episode.
        let racks = config.nodes.div_ceil(config.rack_size.max(1));
        for rack in 0..racks {
            let n = poisson(&mut rng, config.rack_event_rate_per_day * config.days);
            for _ in 0..n {
                let kind = if rng.gen_bool(0.5) {
                    FaultKind::RackCooling
                } else {
                    FaultKind::RackNetwork
                };
                let dur = (log_uniform(&mut rng, 20.0, 360.0) * MINUTE_MS as f64) as i64;
                let s = start + rng.gen_range(0..duration_ms.max(1));
                let ep = Episode {
                    kind,
                    start_ms: s,
                    end_ms: s + dur,
                    peak: rng.gen_range(0.3..1.0),
                    shape: Shape::Bump {
                        top_ms: s + dur / 3,
                    },
                };
                for (i, p) in profiles.iter().enumerate() {
                    if p.rack == rack {
                        episodes[i].push(ep.clone());
                    }
                }
            }
        }

        let drift = Drift {
            at_ms: start + (duration_ms as f64 * rng.gen_range(0.45..0.65)) as i64,
            load_mult: rng.gen_range(0.85..1.2),
            latency_mult: [
                rng.gen_range(0.8..1.3),
                rng.gen_range(0.8..1.3),
                rng.gen_range(0.8..1.3),
                rng.gen_range(0.8..1.3),
            ],
        };
        failures.sort_by_key(|f| f.failed_at_ms);
        Plan {
            config: config.clone(),
            profiles,
            failures,
            episodes,
            drift,
            expected_failures,
            false_precursors,
        }
    }

    /// All samples of node `i` (dead nodes stop reporting; gaps, drops and jitter applied).
    pub fn node_samples(&self, i: usize) -> Vec<HealthSample> {
        let cfg = &self.config;
        let seed = cfg.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut sim = NodeSim::new(self.profiles[i].clone(), seed);
        sim.episodes = self.episodes[i].clone();
        sim.drift = Some(self.drift.clone());
        let mut rng = StdRng::seed_from_u64(seed.rotate_left(17) ^ 0xA5A5);
        let end = cfg.start_ms + (cfg.days * DAY_MS as f64) as i64;
        let end = self
            .failures
            .iter()
            .find(|f| f.node == self.profiles[i].name)
            .map_or(end, |f| f.failed_at_ms.min(end));
        let mut gaps = Vec::new();
        for _ in 0..poisson(&mut rng, cfg.gap_rate_per_day * cfg.days) {
            let s = cfg.start_ms + rng.gen_range(0..(end - cfg.start_ms).max(1));
            let len = (rng.gen_range(5.0..90.0) * MINUTE_MS as f64) as i64;
            gaps.push((s, s + len));
        }
        let jitter_sd = cfg.jitter_frac * cfg.interval_ms as f64;
        let max_jitter = cfg.interval_ms as f64 * 0.4;
        let mut out = Vec::with_capacity(((end - cfg.start_ms) / cfg.interval_ms.max(1)) as usize);
        let mut t = cfg.start_ms;
        while t < end {
            let ts = t + (jitter_sd * gauss(&mut rng)).clamp(-max_jitter, max_jitter) as i64;
            // The simulator advances even when a sample is lost, so state stays continuous.
            let s = sim.sample(ts, cfg.interval_ms);
            let lost = rng.gen_bool(cfg.missing_rate.clamp(0.0, 1.0))
                || gaps.iter().any(|&(a, b)| ts >= a && ts < b);
            if !lost && ts < end {
                out.push(s);
            }
            t += cfg.interval_ms;
        }
        out
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateSummary {
    /// Samples written.
    pub samples: usize,
    /// Failures in the trace.
    pub failures: usize,
    /// Of which with a precursor.
    pub precursor_failures: usize,
    /// False precursor episodes placed.
    pub false_precursors: usize,
    /// Sample files written.
    pub files: usize,
}

/// Generates a trace directory: sample files of `nodes_per_file` nodes each (gzip), then
/// `failures.jsonl` and `plan.json` (the ground truth: profiles, episodes, drift).
pub fn generate(
    config: &GeneratorConfig,
    out: &Path,
    progress: &ProgressBar,
) -> Result<GenerateSummary, TraceError> {
    let io = |e| TraceError::Io {
        path: out.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(out).map_err(io)?;
    let plan = Plan::new(config);
    let per_file = config.nodes_per_file.max(1);
    let chunks: Vec<(usize, std::ops::Range<usize>)> = (0..config.nodes)
        .step_by(per_file)
        .enumerate()
        .map(|(f, lo)| (f, lo..(lo + per_file).min(config.nodes)))
        .collect();
    progress.set_length(config.nodes as u64);
    let counts: Vec<usize> = chunks
        .par_iter()
        .map(|(f, range)| -> Result<usize, TraceError> {
            let mut w = SampleWriter::create(&out.join(format!("samples-{f:04}.jsonl.gz")))?;
            let mut n = 0;
            for i in range.clone() {
                for s in plan.node_samples(i) {
                    w.write(&s)?;
                    n += 1;
                }
                progress.inc(1);
            }
            w.finish()?;
            Ok(n)
        })
        .collect::<Result<_, _>>()?;
    write_failures(out, &plan.failures)?;
    let plan_path = out.join("plan.json");
    let json = serde_json::to_vec_pretty(&plan).map_err(|e| TraceError::Io {
        path: plan_path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&plan_path, json).map_err(|e| TraceError::Io {
        path: plan_path.clone(),
        source: e,
    })?;
    Ok(GenerateSummary {
        samples: counts.iter().sum(),
        failures: plan.failures.len(),
        precursor_failures: plan
            .failures
            .iter()
            .filter(|f| f.has_precursor() == Some(true))
            .count(),
        false_precursors: plan.false_precursors,
        files: chunks.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Trace;

    fn small() -> GeneratorConfig {
        GeneratorConfig {
            nodes: 12,
            days: 3.0,
            interval_ms: 5 * MINUTE_MS,
            seed: 7,
            failure_boost: 400.0,
            nodes_per_file: 5,
            ..Default::default()
        }
    }

    #[test]
    fn generation_is_deterministic_and_readable() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = generate(&small(), a.path(), &ProgressBar::hidden()).unwrap();
        generate(&small(), b.path(), &ProgressBar::hidden()).unwrap();
        let ta = Trace::read_dir(a.path(), &ProgressBar::hidden()).unwrap();
        let tb = Trace::read_dir(b.path(), &ProgressBar::hidden()).unwrap();
        assert_eq!(ta.sample_count(), sa.samples);
        assert_eq!(ta.nodes.len(), 12);
        assert_eq!(sa.files, 3);
        assert!(sa.failures > 0, "boosted hazard must produce failures");
        for (x, y) in ta.nodes.iter().zip(&tb.nodes) {
            assert_eq!(x.ts, y.ts);
            assert_eq!(x.values.len(), y.values.len());
        }
        // Dead nodes stop reporting.
        for f in ta.failures.values() {
            let n = ta.nodes.iter().find(|n| n.node == f.node).unwrap();
            assert!(n.ts.last().is_none_or(|&t| t < f.failed_at_ms));
        }
    }

    #[test]
    fn precursor_raises_latency_and_bump_recovers() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut p = NodeSim::random_profile("n".into(), 0, &mut rng);
        p.cohort = 1;
        let mut sim = NodeSim::new(p, 5);
        let t0 = 1_763_942_400_000;
        sim.episodes.push(Episode {
            kind: FaultKind::FailSlowDisk,
            start_ms: t0 + DAY_MS,
            end_ms: t0 + 2 * DAY_MS,
            peak: 1.0,
            shape: Shape::Ramp { gamma: 1.0 },
        });
        let mean_lat = |sim: &mut NodeSim, from: i64| {
            (0..60)
                .map(|k| {
                    sim.sample(from + k * MINUTE_MS, MINUTE_MS)
                        .disk_read_lat_ms
                        .unwrap_or(0.0)
                })
                .sum::<f64>()
                / 60.0
        };
        let healthy = mean_lat(&mut sim, t0 + 14 * HOUR_MS);
        let sick = mean_lat(&mut sim, t0 + DAY_MS + 23 * HOUR_MS);
        assert!(sick > 3.0 * healthy, "healthy {healthy} sick {sick}");
        let bump = Episode {
            kind: FaultKind::PacketLoss,
            start_ms: 0,
            end_ms: 100,
            peak: 0.5,
            shape: Shape::Bump { top_ms: 50 },
        };
        assert_eq!(bump.severity(50), 0.5);
        assert_eq!(bump.severity(100), 0.0);
    }
}
