//! Trace directories: `*.jsonl` / `*.jsonl.gz` sample files plus `failures.jsonl`.
//!
//! Samples are kept column-light in memory ([`NodeSeries`]: timestamps + f32 metric rows) because
//! a training trace of 500 nodes x 30 days at 1 min is 21.6 M samples; as `HealthSample` structs
//! with a node string each it would not fit comfortably in RAM.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::sample::{FailureRecord, HealthSample};

mod grid;
mod series;
mod smart;
pub use grid::{GridError, GridSeries};
pub use series::NodeSeries;
pub use smart::{SmartColumn, SmartSeries};

/// File holding failure records inside a trace directory.
pub const FAILURES_FILE: &str = "failures.jsonl";

/// Why a trace could not be read or written. Every variant names the file, and the line where
/// there is one, so a user can open the exact spot.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file or directory could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid JSON or misses / mistypes a required field.
    #[error("{path}:{line}: {source}")]
    Parse {
        /// The file involved.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What serde found wrong (names the field).
        #[source]
        source: serde_json::Error,
    },
    /// A line parsed but holds an impossible value.
    #[error("{path}:{line}: field `{field}`: {reason}")]
    Invalid {
        /// The file involved.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending field.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The directory holds no sample files at all.
    #[error("{dir}: no *.jsonl or *.jsonl.gz sample files")]
    Empty {
        /// The directory searched.
        dir: PathBuf,
    },
}

impl TraceError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        TraceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A loaded trace directory.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// One series per node, ordered by node id.
    pub nodes: Vec<NodeSeries>,
    /// Failures by node id (the first failure of a node; a node fails once).
    pub failures: BTreeMap<String, FailureRecord>,
}

impl Trace {
    /// Earliest sample time, or 0 for an empty trace.
    pub fn start_ms(&self) -> i64 {
        self.nodes
            .iter()
            .filter_map(|n| n.ts.first())
            .min()
            .copied()
            .unwrap_or(0)
    }

    /// Latest sample time, or 0 for an empty trace.
    pub fn end_ms(&self) -> i64 {
        self.nodes
            .iter()
            .filter_map(|n| n.ts.last())
            .max()
            .copied()
            .unwrap_or(0)
    }

    /// Total number of samples.
    pub fn sample_count(&self) -> usize {
        self.nodes.iter().map(|n| n.ts.len()).sum()
    }

    /// Reads a trace directory: every `*.jsonl` / `*.jsonl.gz` except `failures.jsonl` is a
    /// sample file; files are parsed in parallel. A missing `failures.jsonl` means "no
    /// failures" (a live trace being scored), which is logged.
    pub fn read_dir(dir: &Path, progress: &ProgressBar) -> Result<Trace, TraceError> {
        Self::read_dir_filtered(dir, &|_| true, progress)
    }

    /// Like [`Trace::read_dir`], keeping only nodes for which `keep` is true (a node split
    /// reads only the nodes it needs: a full Backblaze import is tens of millions of
    /// drive-days).
    pub fn read_dir_filtered(
        dir: &Path,
        keep: &(dyn Fn(&str) -> bool + Sync),
        progress: &ProgressBar,
    ) -> Result<Trace, TraceError> {
        let entries = std::fs::read_dir(dir).map_err(|e| TraceError::io(dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| TraceError::io(dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == FAILURES_FILE {
                continue;
            }
            if name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") {
                files.push(path);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(TraceError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        progress.set_length(files.len() as u64);
        let parts: Vec<BTreeMap<String, NodeSeries>> = files
            .par_iter()
            .with_max_len(1)
            .map(|path| {
                let part = read_sample_file_filtered(path, keep);
                progress.inc(1);
                part
            })
            .collect::<Result<_, _>>()?;
        let mut merged: BTreeMap<String, NodeSeries> = BTreeMap::new();
        for part in parts {
            for (node, series) in part {
                let slot = merged.entry(node.clone()).or_insert_with(|| NodeSeries {
                    node,
                    ..Default::default()
                });
                slot.ts.extend(series.ts);
                slot.values.extend(series.values);
                slot.smart.append(series.smart);
            }
        }
        let mut nodes: Vec<NodeSeries> = merged.into_values().collect();
        nodes
            .par_iter_mut()
            .with_max_len(1)
            .for_each(NodeSeries::normalise_order);
        let failures_path = dir.join(FAILURES_FILE);
        let mut failures = if failures_path.exists() {
            read_failures(&failures_path)?
        } else {
            tracing::warn!(dir = %dir.display(), "no failures.jsonl: assuming no failures");
            BTreeMap::new()
        };
        failures.retain(|node, _| keep(node));
        Ok(Trace { nodes, failures })
    }
}

/// Opens a possibly gzip-compressed file for line reading (by its `.gz` suffix).
fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>, TraceError> {
    let file = File::open(path).map_err(|e| TraceError::io(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            MultiGzDecoder::new(BufReader::new(file)),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 16, file)))
    }
}

/// Calls `f` for every non-blank line of a file with its 1-based line number.
fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &str) -> Result<(), TraceError>,
) -> Result<(), TraceError> {
    let mut reader = open_lines(path)?;
    let mut line = String::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| TraceError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let text = line.trim();
        if !text.is_empty() {
            f(number, text)?;
        }
    }
}

/// Parses and validates one sample line, with file and line in any error.
pub fn parse_sample_line(path: &Path, line: usize, text: &str) -> Result<HealthSample, TraceError> {
    let sample: HealthSample = serde_json::from_str(text).map_err(|source| TraceError::Parse {
        path: path.to_path_buf(),
        line,
        source,
    })?;
    sample
        .validate()
        .map_err(|(field, reason)| TraceError::Invalid {
            path: path.to_path_buf(),
            line,
            field,
            reason,
        })?;
    Ok(sample)
}

/// Reads every sample of one file (plain or gzip), grouped by node.
pub fn read_sample_file(path: &Path) -> Result<BTreeMap<String, NodeSeries>, TraceError> {
    read_sample_file_filtered(path, &|_| true)
}

/// Reads the samples of one file whose node passes `keep`, grouped by node. Lines of other
/// nodes are still parsed and validated: a broken file is an error whichever nodes are read.
pub fn read_sample_file_filtered(
    path: &Path,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Result<BTreeMap<String, NodeSeries>, TraceError> {
    let mut out: BTreeMap<String, NodeSeries> = BTreeMap::new();
    for_each_line(path, |line, text| {
        let s = parse_sample_line(path, line, text)?;
        if !keep(&s.node) {
            return Ok(());
        }
        let slot = match out.get_mut(&s.node) {
            Some(slot) => slot,
            None => out.entry(s.node.clone()).or_insert_with(|| NodeSeries {
                node: s.node.clone(),
                ..Default::default()
            }),
        };
        slot.push(&s);
        Ok(())
    })?;
    Ok(out)
}

/// Reads every sample of one file into `HealthSample`s (replays, small files).
pub fn read_samples(path: &Path) -> Result<Vec<HealthSample>, TraceError> {
    let mut out = Vec::new();
    for_each_line(path, |line, text| {
        out.push(parse_sample_line(path, line, text)?);
        Ok(())
    })?;
    Ok(out)
}

/// Reads `failures.jsonl`, keeping the earliest failure of each node.
pub fn read_failures(path: &Path) -> Result<BTreeMap<String, FailureRecord>, TraceError> {
    let mut out: BTreeMap<String, FailureRecord> = BTreeMap::new();
    for_each_line(path, |line, text| {
        let rec: FailureRecord =
            serde_json::from_str(text).map_err(|source| TraceError::Parse {
                path: path.to_path_buf(),
                line,
                source,
            })?;
        match out.get(&rec.node) {
            Some(prev) if prev.failed_at_ms <= rec.failed_at_ms => {}
            _ => {
                out.insert(rec.node.clone(), rec);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Writes samples as JSON lines, gzip-compressed when the path ends in `.gz`.
pub struct SampleWriter {
    path: PathBuf,
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
}

impl SampleWriter {
    /// Creates (truncates) the file. Gzip uses a fast level: trace files are written once in
    /// bulk and the generator is I/O bound.
    pub fn create(path: &Path) -> Result<Self, TraceError> {
        let file = File::create(path).map_err(|e| TraceError::io(path, e))?;
        let out: Box<dyn Write + Send> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(GzEncoder::new(
                BufWriter::with_capacity(1 << 16, file),
                Compression::fast(),
            ))
        } else {
            Box::new(BufWriter::with_capacity(1 << 16, file))
        };
        Ok(SampleWriter {
            path: path.to_path_buf(),
            out,
            buf: Vec::with_capacity(512),
        })
    }

    /// Appends any serialisable record as one line.
    pub fn write<T: serde::Serialize>(&mut self, record: &T) -> Result<(), TraceError> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, record)
            .map_err(|e| TraceError::io(&self.path, std::io::Error::other(e)))?;
        self.buf.push(b'\n');
        self.out
            .write_all(&self.buf)
            .map_err(|e| TraceError::io(&self.path, e))
    }

    /// Flushes buffers and finishes the gzip stream; dropping without this loses the tail.
    pub fn finish(mut self) -> Result<(), TraceError> {
        self.out.flush().map_err(|e| TraceError::io(&self.path, e))
    }
}

/// Writes `failures.jsonl` into a trace directory.
pub fn write_failures(dir: &Path, failures: &[FailureRecord]) -> Result<(), TraceError> {
    let mut w = SampleWriter::create(&dir.join(FAILURES_FILE))?;
    for f in failures {
        w.write(f)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::SmartReadings;

    fn sample(node: &str, ts: i64) -> HealthSample {
        HealthSample {
            node: node.into(),
            ts_ms: ts,
            cpu_util: Some(0.5),
            mem_util: Some(0.5),
            disk_read_lat_ms: Some(1.0),
            disk_write_lat_ms: Some(2.0),
            disk_read_mbps: Some(10.0),
            disk_write_mbps: Some(5.0),
            disk_util: Some(0.2),
            net_rtt_ms: Some(0.3),
            net_loss_pct: Some(0.0),
            net_errors: Some(0),
            err_log_count: Some(1),
            psu_ok: Some(true),
            ..Default::default()
        }
    }

    fn smart(node: &str, ts: i64, attrs: &[(&str, &str, f64)]) -> HealthSample {
        let mut readings = SmartReadings::new();
        for &(dev, attr, v) in attrs {
            readings
                .entry(dev.to_string())
                .or_default()
                .insert(attr.to_string(), v);
        }
        HealthSample {
            smart: Some(readings),
            ..HealthSample::empty(node, ts)
        }
    }

    #[test]
    fn smart_readings_form_columns_across_files_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SampleWriter::create(&dir.path().join("a.jsonl")).unwrap();
        w.write(&smart(
            "d1",
            3000,
            &[("sda", "5", 2.0), ("sda", "197", 1.0)],
        ))
        .unwrap();
        w.write(&sample("d1", 2500)).unwrap();
        w.write(&smart("d1", 1000, &[("sda", "5", 0.0)])).unwrap();
        w.finish().unwrap();
        let mut w = SampleWriter::create(&dir.path().join("b.jsonl")).unwrap();
        w.write(&smart("d1", 2000, &[("sdb", "media_errors", 4.0)]))
            .unwrap();
        w.write(&smart("d2", 2000, &[("sda", "5", 9.0)])).unwrap();
        w.finish().unwrap();
        let keep_d1 = |n: &str| n == "d1";
        let t = Trace::read_dir_filtered(dir.path(), &keep_d1, &ProgressBar::hidden()).unwrap();
        assert_eq!(t.nodes.len(), 1, "d2 filtered out");
        let s = &t.nodes[0];
        assert_eq!(s.ts, vec![2500], "only the metric sample is a metric row");
        assert_eq!(s.smart.ts, vec![1000, 2000, 3000]);
        assert_eq!(s.smart.devices(), vec!["sda", "sdb"]);
        let five = s.smart.column("sda", "5").unwrap();
        assert_eq!(five[0], 0.0);
        assert!(five[1].is_nan());
        assert_eq!(five[2], 2.0);
        assert_eq!(s.smart.column("sdb", "media_errors").unwrap()[1], 4.0);
        assert!(s.smart.column("sda", "197").unwrap()[0].is_nan());
    }

    #[test]
    fn writes_and_reads_gz_and_plain_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SampleWriter::create(&dir.path().join("a.jsonl.gz")).unwrap();
        for ts in [3000, 1000, 2000, 2000] {
            w.write(&sample("n1", ts)).unwrap();
        }
        w.finish().unwrap();
        let mut w = SampleWriter::create(&dir.path().join("b.jsonl")).unwrap();
        w.write(&sample("n2", 5)).unwrap();
        w.finish().unwrap();
        write_failures(
            dir.path(),
            &[FailureRecord {
                node: "n2".into(),
                failed_at_ms: 10,
                cause: None,
                precursor_onset_ms: None,
                died_at_ms: None,
            }],
        )
        .unwrap();
        let t = Trace::read_dir(dir.path(), &ProgressBar::hidden()).unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[0].ts, vec![1000, 2000, 3000]);
        assert_eq!(t.failures["n2"].failed_at_ms, 10);
        assert_eq!(t.start_ms(), 5);
        assert_eq!(t.nodes[0].range(1000, 3000), 1..3);
    }

    #[test]
    fn bad_lines_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&sample("n1", 1)).unwrap();
        // Metrics are optional (unmeasured); the node and the time are not.
        let missing = good.replace("\"ts_ms\":1,", "");
        let unmeasured = good.replace("\"cpu_util\":0.5,", "");
        std::fs::write(
            dir.path().join("x.jsonl"),
            format!("{good}\n{unmeasured}\n{missing}\n"),
        )
        .unwrap();
        let err = Trace::read_dir(dir.path(), &ProgressBar::hidden()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.jsonl:3"), "{msg}");
        assert!(msg.contains("ts_ms"), "{msg}");

        let typed = good.replace("\"net_errors\":0", "\"net_errors\":\"many\"");
        std::fs::write(dir.path().join("x.jsonl"), format!("{typed}\n")).unwrap();
        let msg = Trace::read_dir(dir.path(), &ProgressBar::hidden())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("x.jsonl:1") && msg.contains("invalid type"),
            "{msg}"
        );

        let range = good.replace("\"disk_util\":0.2", "\"disk_util\":3.0");
        std::fs::write(dir.path().join("x.jsonl"), format!("{range}\n")).unwrap();
        let err = Trace::read_dir(dir.path(), &ProgressBar::hidden()).unwrap_err();
        assert!(matches!(
            err,
            TraceError::Invalid {
                field: "disk_util",
                line: 1,
                ..
            }
        ));
    }

    #[test]
    fn empty_dir_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Trace::read_dir(dir.path(), &ProgressBar::hidden()),
            Err(TraceError::Empty { .. })
        ));
    }
}
