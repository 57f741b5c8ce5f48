//! The command line: every subcommand's arguments, with their documentation (what
//! `augur-predict --help` prints), and the parsers of durations and rule lists.

use std::path::PathBuf;

use augur_predictor::import::parse_date_ms;
use clap::{Args, Parser, Subcommand};

/// Failure prediction for Augur storage nodes.
#[derive(Parser)]
#[command(name = "augur-predict", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `augur_predictor=debug`.
    #[arg(long, global = true, default_value = "warn", env = "AUGUR_LOG")]
    pub log: String,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Write a synthetic trace directory (see predictor/README.md for the model).
    Generate(GenerateArgs),
    /// Train a model on a trace directory.
    Train(TrainArgs),
    /// Evaluate a model and its baselines on the nodes it never saw.
    Eval(EvalArgs),
    /// Re-choose the alert rules (k, n, threshold) of a model and its baselines on a
    /// validation trace: for each, the one whose weakest target (precision, false alarms,
    /// recall, lead) has the most room. Use a seed neither training nor evaluation uses.
    Tune(TuneArgs),
    /// Print each node's risk over time with reasons, then the policy's verdict at the end.
    Score {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Trace directory.
        #[arg(long)]
        traces: PathBuf,
        /// Time between printed rows.
        #[arg(long, default_value = "6h", value_parser = parse_duration_ms)]
        every: i64,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Only print rows with at least this risk.
        #[arg(long, default_value_t = 0.0)]
        min_risk: f64,
        /// Emit JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Turn another fleet's failure data into a trace directory.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Benchmark scoring one node's window (release build; reports medians).
    Bench {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Timed iterations per case.
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Days simulated.
    #[arg(long, default_value_t = 30.0)]
    pub days: f64,
    /// Sample interval, e.g. 60s, 5s, 1m.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    pub interval: i64,
    /// Master seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Fleet annual failure rate at natural rate.
    #[arg(long, default_value_t = 0.05)]
    pub afr: f64,
    /// Hazard multiplier to oversample failures (failure-rich traces).
    #[arg(long, default_value_t = 1.0)]
    pub failure_boost: f64,
    /// Fraction of failures with no precursor.
    #[arg(long, default_value_t = 0.4)]
    pub sudden_fraction: f64,
    /// False precursors per expected failure.
    #[arg(long, default_value_t = 4.0)]
    pub false_precursor_ratio: f64,
    /// The harder fleet: intermittent precursors that overlap benign noise, chronically
    /// noisy healthy nodes, precursor shapes that depend on the hardware cohort, benign
    /// episodes that do not recover, and failures recorded late (label delay).
    #[arg(long)]
    pub hard: bool,
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Trace directory.
    #[arg(long)]
    pub traces: PathBuf,
    /// Which model: `node` (node metrics), `disk` (SMART) or `auto` (node when the trace has
    /// node metrics, else disk).
    #[arg(long, default_value = "auto")]
    pub kind: String,
    /// Prediction horizon H, e.g. 24h, 30d (default: 24h for node, 30d for disk models).
    #[arg(long, value_parser = parse_duration_ms)]
    pub horizon: Option<i64>,
    /// Fraction of nodes that train, by a hash of the node id; the rest are held out and
    /// `eval` reads only them (default: 0.7 for disk models, 1 for node models).
    #[arg(long)]
    pub train_frac: Option<f64>,
    /// Salt of the node hash (another salt, another split).
    #[arg(long, default_value_t = 0)]
    pub split_salt: u64,
    /// Disk models: train only on data before this date (YYYY-MM-DD, UTC).
    #[arg(long, value_parser = parse_date_ms)]
    pub until: Option<i64>,
    /// Cross-validation folds over node groups (at least 2).
    #[arg(long, default_value_t = 4)]
    pub folds: usize,
    /// Output model file.
    #[arg(long)]
    pub out: PathBuf,
    /// Node models: time between scoring rounds.
    #[arg(long, default_value = "5m", value_parser = parse_duration_ms)]
    pub round: i64,
    /// Node models: number of boosted trees.
    #[arg(long, default_value_t = 150)]
    pub trees: usize,
    /// Node models: label horizon of the trees (see `TrainConfig::tree_horizon_ms`).
    #[arg(long, default_value = "6h", value_parser = parse_duration_ms)]
    pub tree_horizon: i64,
    /// Node models: keep rounds between the tree horizon and H before a failure as
    /// negatives.
    #[arg(long)]
    pub keep_gap: bool,
    /// Node models: take a failed node's failure time as the end of its reports when that
    /// is earlier than the recorded time (failures logged late; see
    /// `TrainConfig::failure_at_silence`).
    #[arg(long)]
    pub failure_at_silence: bool,
    /// Node models: give the trees bin cuts in the tail of zero-inflated features (a PSU
    /// that is up 97% of the time), half of the cuts above the most common value; see
    /// `GbtConfig::tail_bins`. Off by default: the shipped model was trained without it.
    #[arg(long)]
    pub tail_bins: bool,
    /// Node models: grow each tree on this fraction of the tree rows, drawn anew per tree
    /// (forust's random row sampling), in (0, 1]. Unset, every tree sees every row, as the
    /// shipped model was trained. Cuts the trees' share of training time about in
    /// proportion; predictor/README.md ("Training time") has what it does to the figures.
    #[arg(long, value_parser = parse_fraction)]
    pub row_sample: Option<f32>,
    /// Keep one in this many failure-free rounds as tree rows (default: 6 for node models,
    /// one round in 30 minutes, 3 before 2026-12-06 and for the shipped node model; 25 for
    /// disk models, whose daily rounds number in the tens of millions).
    #[arg(long, value_parser = parse_positive)]
    pub negative_stride: Option<usize>,
    /// Node models: autoencoder epochs.
    #[arg(long, default_value_t = 12)]
    pub lstm_epochs: usize,
    /// Node models: healthy windows for the autoencoder.
    #[arg(long, default_value_t = 6000)]
    pub lstm_windows: usize,
    /// Node models: candidate alert rules `k/n`, separated by commas; every method picks
    /// its own among them.
    #[arg(long, default_value = "2/3,3/6,2/12,3/12,4/12", value_parser = parse_rules)]
    pub rules: Rules,
    /// Node models: only this k-of-n rule (with --n; overrides --rules).
    #[arg(long, value_parser = parse_positive, requires = "n")]
    pub k: Option<usize>,
    /// Node models: n of the only rule (with --k).
    #[arg(long, value_parser = parse_positive, requires = "k")]
    pub n: Option<usize>,
    /// False-alarm budget per 1000 healthy node-days for every method's operating point
    /// (node models: default 1, and the model is also held to the static thresholds' own
    /// rate; disk models: default the out-of-fold rate of Backblaze's rule).
    #[arg(long)]
    pub max_false_alarms: Option<f64>,
    /// Node models: precision floor of the operating points, honoured when reachable.
    #[arg(long, default_value_t = 0.0)]
    pub min_precision: f64,
    /// Seed of training's sampling.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Trace directory.
    #[arg(long)]
    pub traces: PathBuf,
    /// Write the full report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML report (PR curves, lead times, timelines) here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Node models: fraction of the time span skipped before the test slice (default 0:
    /// all of it; nothing is fitted on the evaluated nodes).
    #[arg(long, default_value_t = 0.0)]
    pub test_from: f64,
    /// Override the model's k (node models).
    #[arg(long, value_parser = parse_positive)]
    pub k: Option<usize>,
    /// Override the model's n (node models).
    #[arg(long, value_parser = parse_positive)]
    pub n: Option<usize>,
    /// Disk models: test rounds from this date (default: the model's training cut-off).
    #[arg(long, value_parser = parse_date_ms)]
    pub test_from_date: Option<i64>,
    /// Bootstrap resamples (over nodes) for the 95% intervals (0: none).
    #[arg(long, default_value_t = 200)]
    pub bootstrap: usize,
    /// Override the model's threshold.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Write the model's per-round test-slice scores here (JSON lines, one node each).
    #[arg(long)]
    pub scores: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct TuneArgs {
    /// Model file to start from.
    #[arg(long)]
    pub model: PathBuf,
    /// Validation trace directory.
    #[arg(long)]
    pub traces: PathBuf,
    /// Where to write the tuned model (may be the input).
    #[arg(long)]
    pub out: PathBuf,
    /// Precision target.
    #[arg(long, default_value_t = 0.8)]
    pub min_precision: f64,
    /// False alarms per 1000 healthy node-days allowed.
    #[arg(long, default_value_t = 1.0)]
    pub max_false_alarms: f64,
    /// Recall target over failures with a precursor.
    #[arg(long, default_value_t = 0.85)]
    pub min_recall: f64,
    /// Median lead target of true alerts.
    #[arg(long, default_value = "2h", value_parser = parse_duration_ms)]
    pub min_lead: i64,
    /// Candidate rules, `k/n` separated by commas.
    #[arg(long, default_value = "2/3,3/3,3/6,2/12,3/12,4/12", value_parser = parse_rules)]
    pub rules: Rules,
    /// Also write the model's per-round validation scores here (JSON lines, as `eval
    /// --scores`).
    #[arg(long)]
    pub scores: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum ImportSource {
    /// Backblaze drive stats in start-stop form (`hds.csv.gz`): one node per drive, one
    /// SMART-only sample per drive-day, failures from the `fails` column.
    Backblaze {
        /// The CSV (plain or .gz).
        file: PathBuf,
        /// Output trace directory (created).
        #[arg(long)]
        out: PathBuf,
        /// Keep only N never-failed drives (seeded sample); every failed drive is kept.
        #[arg(long)]
        healthy: Option<usize>,
        /// Seed of the healthy sample.
        #[arg(long, default_value_t = 20_261_128)]
        seed: u64,
    },
}

/// A list of (k, n) rules, as `--rules` parses it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rules(pub Vec<(usize, usize)>);

/// A count that must be at least 1 (`--k 0` would alert on every round).
pub(crate) fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("`{s}` is not a positive integer")),
    }
}

/// A fraction in (0, 1]: 0 would grow trees on no row at all.
pub(crate) fn parse_fraction(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not in (0, 1]")),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

/// Parses `2/3,3/12` into (k, n) pairs with 1 <= k <= n.
pub(crate) fn parse_rules(s: &str) -> Result<Rules, String> {
    s.split(',')
        .map(|r| {
            let (k, n) = r
                .trim()
                .split_once('/')
                .ok_or_else(|| format!("rule `{r}` is not k/n"))?;
            let k: usize = k.trim().parse().map_err(|_| format!("bad k in `{r}`"))?;
            let n: usize = n.trim().parse().map_err(|_| format!("bad n in `{r}`"))?;
            if k == 0 || k > n {
                return Err(format!("rule `{r}` needs 1 <= k <= n"));
            }
            Ok((k, n))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Rules)
}

/// Parses `500ms`, `60s`, `5m`, `24h`, `2d` (a bare number is seconds).
pub(crate) fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 60s, 5m, 24h"))?;
    let mult = match unit {
        "ms" => 1.0,
        "" | "s" => 1e3,
        "m" | "min" => 6e4,
        "h" => 3.6e6,
        "d" => 8.64e7,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m, h, d)"
            ))
        }
    };
    let ms = (v * mult).round();
    if ms.is_nan() || ms < 1.0 {
        return Err(format!("duration `{s}` must be positive"));
    }
    Ok(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::{parse_duration_ms, parse_fraction, parse_rules, Rules};

    #[test]
    fn row_fractions_are_refused_outside_zero_to_one() {
        assert_eq!(parse_fraction("0.5"), Ok(0.5));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        for bad in ["0", "-0.2", "1.01", "NaN", "half"] {
            assert!(parse_fraction(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rules_parse_and_reject_nonsense() {
        assert_eq!(parse_rules("2/3, 3/12"), Ok(Rules(vec![(2, 3), (3, 12)])));
        assert!(parse_rules("3/2").is_err());
        assert!(parse_rules("0/2").is_err());
        assert!(parse_rules("2-3").is_err());
    }

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration_ms("60s"), Ok(60_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("24h"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("1.5d"), Ok(129_600_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("30"), Ok(30_000));
        assert!(parse_duration_ms("5w").is_err());
        assert!(parse_duration_ms("h").is_err());
        assert!(parse_duration_ms("0s").is_err());
    }
}
