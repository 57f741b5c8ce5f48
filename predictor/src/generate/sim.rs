//! One node's physics: fault kinds, episodes and their time profiles, hardware cohorts and
//! the sample-by-sample simulator shared by the trace generator and the agent's simulated
//! source.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{gauss, poisson, round, HOUR_MS, MINUTE_MS};
use crate::sample::HealthSample;

/// What goes wrong on a node, as a precursor (before a failure), a false precursor (benign)
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
    /// Rises linearly to `peak` at `top`, then stays there until `end` (a benign episode
    /// that never recovers: a chronically noisy link, a sensor that reads hot).
    Plateau {
        /// Time the plateau is reached.
        top_ms: i64,
    },
}

/// On / off switching of an episode (harder traces): time is cut into blocks, and each block
/// is on with a probability (the duty) that rises from `duty0` to 1 as a ramp progresses
/// (and stays at `duty0` for other shapes). An off block keeps `off_level` of the severity.
/// Real precursors then come and go like the benign bumps they overlap with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Gate {
    /// Block length, ms.
    pub block_ms: i64,
    /// Duty at the start of the episode.
    pub duty0: f64,
    /// Fraction of the severity left in an off block.
    pub off_level: f64,
    /// Seed of the on / off draws.
    pub seed: u64,
}

impl Gate {
    /// The gate's factor at `t`, for an episode `progress` (0..1) of the way through.
    fn factor(&self, t: i64, progress: f64) -> f64 {
        let block = t.div_euclid(self.block_ms.max(1)) as u64;
        // SplitMix64 of (seed, block): a pure function of time, so the simulator can be
        // asked for any sample in any order.
        let mut z = self.seed ^ block.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        let duty = self.duty0 + (1.0 - self.duty0) * progress.clamp(0.0, 1.0);
        if u < duty {
            1.0
        } else {
            self.off_level
        }
    }
}

/// One fault episode on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Episode {
    /// What goes wrong.
    pub kind: FaultKind,
    /// When it begins.
    pub start_ms: i64,
    /// When the ramp completes / the bump is over / the plateau ends.
    pub end_ms: i64,
    /// Maximum severity, 1.0 = the severity reached right before a failure.
    pub peak: f64,
    /// Time profile.
    pub shape: Shape,
    /// Intermittency, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

impl Episode {
    /// Severity in 0..=peak at time `t`.
    pub fn severity(&self, t: i64) -> f64 {
        if t < self.start_ms {
            return 0.0;
        }
        let span = (self.end_ms - self.start_ms).max(1) as f64;
        let progress = ((t - self.start_ms) as f64 / span).clamp(0.0, 1.0);
        let envelope = match self.shape {
            Shape::Ramp { gamma } => self.peak * progress.powf(gamma),
            Shape::Bump { top_ms } => {
                if t >= self.end_ms {
                    0.0
                } else if t <= top_ms {
                    self.peak * (t - self.start_ms) as f64 / (top_ms - self.start_ms).max(1) as f64
                } else {
                    self.peak * (self.end_ms - t) as f64 / (self.end_ms - top_ms).max(1) as f64
                }
            }
            Shape::Plateau { top_ms } => {
                if t >= self.end_ms {
                    0.0
                } else {
                    let rise = (t - self.start_ms) as f64 / (top_ms - self.start_ms).max(1) as f64;
                    self.peak * rise.min(1.0)
                }
            }
        };
        match (&self.gate, envelope > 0.0) {
            (Some(g), true) => {
                let p = if matches!(self.shape, Shape::Ramp { .. }) {
                    progress
                } else {
                    0.0
                };
                envelope * g.factor(t, p)
            }
            _ => envelope,
        }
    }
}

/// A hardware generation: different baselines, failure rates, sensors and (in the harder
/// traces) different ways of dying.
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
    /// Harder traces: relative odds of each precursor kind ([`FaultKind::PRECURSORS`]
    /// order): spinning disks mostly slow down and log media errors, flash mostly logs
    /// errors and runs hot.
    pub precursor_odds: [f64; 5],
    /// Harder traces: median precursor lead, hours (spinning disks degrade for longer).
    pub lead_median_h: f64,
    /// Harder traces: range of the ramp's curvature (above 1: quiet, then accelerating,
    /// as a disk whose retries compound; well below 1: an abrupt step, as flash that
    /// runs out of spare blocks).
    pub gamma: (f64, f64),
    /// Harder traces: probability that a precursor is intermittent.
    pub p_intermittent: f64,
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
        precursor_odds: [4.0, 3.0, 1.0, 1.0, 1.0],
        lead_median_h: 14.0,
        gamma: (0.9, 2.0),
        p_intermittent: 0.5,
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
        precursor_odds: [3.0, 3.0, 1.0, 1.5, 1.5],
        lead_median_h: 10.0,
        gamma: (0.7, 1.6),
        p_intermittent: 0.5,
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
        precursor_odds: [1.0, 4.0, 2.0, 1.0, 1.0],
        lead_median_h: 5.0,
        gamma: (0.2, 0.6),
        p_intermittent: 0.7,
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
        precursor_odds: [1.0, 3.0, 3.0, 1.0, 1.5],
        lead_median_h: 4.0,
        gamma: (0.2, 0.5),
        p_intermittent: 0.7,
    },
];

/// A healthy node that is chronically noisy in one way (harder traces): the noise looks
/// like a mild precursor and never goes away.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Noise {
    /// Kernel error lines at this rate per minute, in bursts.
    ErrorProne(f64),
    /// Packet loss (percent) and interface errors around this level.
    FlakyNetwork(f64),
    /// Runs this many °C hot, with a noisier sensor.
    HotRunning(f64),
    /// Latency noise (log-normal sigma) this large, with occasional spikes.
    JitteryDisk(f64),
}

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
    /// Chronic benign noise, if any (harder traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<Noise>,
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
            noise: None,
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
        let mut lat_sigma = 0.15;
        let mut tput_factor = 1.0;
        let mut err_rate = 0.003; // kernel err lines per minute on a healthy node
        let mut net_err_rate = 0.01;
        let mut loss = 0.02 * rng.gen::<f64>().powi(4);
        let mut rtt = self.profile.rtt_ms * (1.0 + 0.4 * load) * (1.0 + 0.1 * gauss(rng)).max(0.5);
        let mut temp = c.temp_base + 12.0 * cpu + 0.5 * gauss(rng);
        let mut psu_flap_p = 0.0;

        match self.profile.noise {
            None => {}
            Some(Noise::ErrorProne(rate)) => {
                // Bursty: most minutes quiet, some at several times the mean.
                err_rate += if rng.gen_bool(0.2) { 5.0 * rate } else { 0.0 };
            }
            Some(Noise::FlakyNetwork(level)) => {
                loss += level * (0.3 + 1.4 * rng.gen::<f64>());
                net_err_rate += 2.0 * level;
                rtt *= 1.0 + 0.5 * rng.gen::<f64>();
            }
            Some(Noise::HotRunning(deg)) => temp += deg + 1.5 * gauss(rng),
            Some(Noise::JitteryDisk(sigma)) => {
                lat_sigma = sigma;
                if rng.gen_bool(0.02) {
                    lat_factor *= 3.0;
                }
            }
        }

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
        let read_lat =
            c.read_lat_ms * lat_mult * queue * lat_factor * (lat_sigma * gauss(rng)).exp();
        let write_lat =
            c.write_lat_ms * lat_mult * queue * lat_factor * (lat_sigma * gauss(rng)).exp();
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
