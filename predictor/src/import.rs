//! Importers that turn other fleets' failure data into trace directories.
//!
//! `backblaze`: the start-stop export of Backblaze's drive statistics in
//! `shared/data/real-failures/backblaze-hds/hds.csv.gz` (one row per interval in which none of
//! nine SMART raw attributes changed, time in power-on hours). Each drive becomes a node with
//! one SMART-only sample per drive-day, like Backblaze's own daily files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use crate::sample::{FailureRecord, HealthSample, SmartAttributes, SmartReadings};
use crate::trace::{write_failures, SampleWriter, TraceError};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The SMART attributes of the Backblaze export (raw values), as ATA attribute ids.
pub const BACKBLAZE_ATTRS: [&str; 9] = ["5", "10", "12", "187", "188", "189", "196", "197", "198"];

/// Device name of the single drive of an imported node.
pub const BACKBLAZE_DEVICE: &str = "disk";

/// Why an import failed. Row errors name the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A row is malformed (missing column, not a number, impossible interval...).
    #[error("{path}:{line}: {reason}")]
    Row {
        /// The input file.
        path: PathBuf,
        /// 1-based line number (the header is line 1).
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The header lacks a column the importer needs.
    #[error("{path}: no `{column}` column in the header")]
    Column {
        /// The input file.
        path: PathBuf,
        /// The missing column.
        column: String,
    },
    /// Writing the trace failed.
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// What to import.
#[derive(Debug, Clone, Serialize)]
pub struct BackblazeImport {
    /// Keep only this many never-failed drives (a seeded sample); `None` keeps all. Every
    /// failed drive is always kept. Subsampling raises the failure rate of the trace, which
    /// flatters precision and false-alarm rates: the protocol keeps all drives.
    pub healthy: Option<usize>,
    /// Seed of the healthy sample.
    pub seed: u64,
    /// Drives per output file.
    pub drives_per_file: usize,
}

impl Default for BackblazeImport {
    fn default() -> Self {
        BackblazeImport {
            healthy: None,
            seed: 20_261_128,
            drives_per_file: 2000,
        }
    }
}

/// What an import wrote (also saved as `import.json` in the trace directory).
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    /// The source file.
    pub source: String,
    /// Settings.
    pub settings: BackblazeImport,
    /// Input rows.
    pub rows: u64,
    /// Drives in the input.
    pub drives_in_input: usize,
    /// Drives written (nodes).
    pub drives: usize,
    /// Of which failed.
    pub failed: usize,
    /// Drive-day samples written.
    pub samples: u64,
    /// Sample files written.
    pub files: usize,
    /// How timestamps and failure times were derived.
    pub time_convention: String,
}

/// One interval row of a drive.
#[derive(Debug, Clone)]
struct Interval {
    tstart: i64,
    tstop: i64,
    fails: bool,
    smart: [Option<f64>; 9],
}

#[derive(Debug, Default)]
struct Drive {
    min_date_ms: i64,
    intervals: Vec<Interval>,
}

fn date_ms(s: &str) -> Option<i64> {
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// Parses `YYYY-MM-DD` as midnight UTC in ms (CLI dates such as the protocol's split).
pub fn parse_date_ms(s: &str) -> Result<i64, String> {
    date_ms(s.trim()).ok_or_else(|| format!("`{s}` is not a date like 2015-10-01"))
}

/// Reads the start-stop CSV (plain or gzip) into drives.
fn read_hds(path: &Path) -> Result<(BTreeMap<String, Drive>, u64), ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let headers = csv
        .headers()
        .map_err(|e| ImportError::Row {
            path: path.to_path_buf(),
            line: 1,
            reason: e.to_string(),
        })?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ImportError::Column {
                path: path.to_path_buf(),
                column: name.to_string(),
            })
    };
    let (c_serial, c_date, c_start, c_stop, c_fails) = (
        col("serial_number")?,
        col("min_date")?,
        col("tstart")?,
        col("tstop")?,
        col("fails")?,
    );
    let c_smart: Vec<usize> = BACKBLAZE_ATTRS
        .iter()
        .map(|a| col(&format!("smart_{a}")))
        .collect::<Result<_, _>>()?;
    let mut drives: BTreeMap<String, Drive> = BTreeMap::new();
    let mut rows = 0u64;
    let mut record = csv::StringRecord::new();
    loop {
        let line = csv.position().line();
        let more = csv.read_record(&mut record).map_err(|e| ImportError::Row {
            path: path.to_path_buf(),
            line: e.position().map_or(line, |p| p.line()),
            reason: e.to_string(),
        })?;
        if !more {
            break;
        }
        rows += 1;
        let bad = |reason: String| ImportError::Row {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let field = |c: usize, name: &str| {
            record
                .get(c)
                .ok_or_else(|| bad(format!("missing `{name}`")))
        };
        let serial = field(c_serial, "serial_number")?.trim();
        if serial.is_empty() {
            return Err(bad("empty serial_number".into()));
        }
        let int = |c: usize, name: &str| -> Result<i64, ImportError> {
            let v = field(c, name)?;
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && x.fract() == 0.0 && *x >= 0.0)
                .map(|x| x as i64)
                .ok_or_else(|| bad(format!("`{name}` = `{v}` is not a non-negative integer")))
                .and_then(|h| {
                    if h <= MAX_POWER_ON_HOURS {
                        Ok(h)
                    } else {
                        Err(bad(format!(
                            "`{name}` = {h} power-on hours is more than {MAX_POWER_ON_HOURS}"
                        )))
                    }
                })
        };
        let tstart = int(c_start, "tstart")?;
        let tstop = int(c_stop, "tstop")?;
        if tstop <= tstart {
            return Err(bad(format!("tstop {tstop} is not after tstart {tstart}")));
        }
        let fails = match field(c_fails, "fails")?.trim() {
            "0" => false,
            "1" => true,
            other => return Err(bad(format!("`fails` = `{other}` is not 0 or 1"))),
        };
        let date = field(c_date, "min_date")?;
        let min_date_ms = date_ms(date.trim())
            .ok_or_else(|| bad(format!("`min_date` = `{date}` is not a date")))?;
        let mut smart = [None; 9];
        for (slot, (&c, attr)) in smart.iter_mut().zip(c_smart.iter().zip(BACKBLAZE_ATTRS)) {
            let v = field(c, attr)?.trim();
            if v.is_empty() || v == "NA" {
                continue;
            }
            *slot = Some(
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| bad(format!("`smart_{attr}` = `{v}` is not a raw value")))?,
            );
        }
        let drive = drives.entry(serial.to_string()).or_default();
        if drive.intervals.is_empty() {
            drive.min_date_ms = min_date_ms;
        }
        drive.intervals.push(Interval {
            tstart,
            tstop,
            fails,
            smart,
        });
    }
    Ok((drives, rows))
}

/// The most power-on hours a row may give (about 114 years). A drive becomes one sample per
/// day of its span, so an absurd `tstop` would otherwise ask for more samples than memory
/// holds (an abort, not an error naming the row).
const MAX_POWER_ON_HOURS: i64 = 1_000_000;

/// The daily samples of one drive and its failure, if it failed.
///
/// Time convention (as `to_daily.py`): day `d` is power-on hour `h0 + 24 d` (the drive's
/// first hour in the data), stamped `min_date + d` at midnight UTC; each day carries the
/// interval holding that hour (the last day: the last interval). A failed drive's failure is stamped 12 h after its last
/// sample: Backblaze marks the last day a drive reported, so the failure happened within the
/// following day, and the midpoint neither flatters nor shortens lead times by a whole day.
fn drive_samples(serial: &str, drive: &Drive) -> (Vec<HealthSample>, Option<FailureRecord>) {
    let mut iv = drive.intervals.clone();
    iv.sort_by_key(|i| i.tstart);
    let (Some(first), Some(last)) = (iv.first(), iv.last()) else {
        return (Vec::new(), None);
    };
    let h0 = first.tstart;
    let last_day = (last.tstop - h0) / 24;
    let did_fail = last.fails;
    let mut out = Vec::with_capacity(last_day as usize + 1);
    let mut j = 0;
    for day in 0..=last_day {
        let h = h0 + 24 * day;
        while j + 1 < iv.len() && iv[j].tstop <= h {
            j += 1;
        }
        // The last day shows the drive's last observation, as Backblaze's record of that day
        // does, even when the final interval began after that day's hour.
        if day == last_day {
            j = iv.len() - 1;
        }
        let mut attrs = SmartAttributes::new();
        attrs.insert("9".to_string(), h as f64);
        for (attr, v) in BACKBLAZE_ATTRS.iter().zip(iv[j].smart) {
            if let Some(v) = v {
                attrs.insert(attr.to_string(), v);
            }
        }
        let mut readings = SmartReadings::new();
        readings.insert(BACKBLAZE_DEVICE.to_string(), attrs);
        out.push(HealthSample {
            smart: Some(readings),
            ..HealthSample::empty(serial, drive.min_date_ms + day * DAY_MS)
        });
    }
    let failure = did_fail.then(|| FailureRecord {
        node: serial.to_string(),
        failed_at_ms: drive.min_date_ms + last_day * DAY_MS + 12 * HOUR_MS,
        cause: None,
        precursor_onset_ms: None,
        died_at_ms: None,
    });
    (out, failure)
}

/// Imports the Backblaze start-stop CSV at `input` into the trace directory `out`.
pub fn import_backblaze(
    input: &Path,
    out: &Path,
    settings: &BackblazeImport,
    progress: &indicatif::ProgressBar,
) -> Result<ImportSummary, ImportError> {
    let (drives, rows) = read_hds(input)?;
    let failed: Vec<&String> = drives
        .iter()
        .filter(|(_, d)| d.intervals.iter().any(|i| i.fails))
        .map(|(k, _)| k)
        .collect();
    let mut healthy: Vec<&String> = drives
        .iter()
        .filter(|(_, d)| !d.intervals.iter().any(|i| i.fails))
        .map(|(k, _)| k)
        .collect();
    if let Some(n) = settings.healthy {
        if n < healthy.len() {
            healthy.shuffle(&mut StdRng::seed_from_u64(settings.seed));
            healthy.truncate(n);
            healthy.sort();
        }
    }
    let mut keep: Vec<&String> = failed.iter().chain(&healthy).copied().collect();
    keep.sort();
    std::fs::create_dir_all(out).map_err(|source| ImportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    progress.set_length(keep.len() as u64);
    let chunks: Vec<&[&String]> = keep.chunks(settings.drives_per_file.max(1)).collect();
    let parts: Vec<(u64, Vec<FailureRecord>)> = chunks
        .par_iter()
        .with_max_len(1)
        .enumerate()
        .map(|(f, chunk)| -> Result<_, ImportError> {
            let mut w = SampleWriter::create(&out.join(format!("drives-{f:04}.jsonl.gz")))?;
            let mut n = 0u64;
            let mut failures = Vec::new();
            for serial in chunk.iter() {
                let (samples, failure) = drive_samples(serial, &drives[*serial]);
                for s in &samples {
                    w.write(s)?;
                }
                n += samples.len() as u64;
                failures.extend(failure);
                progress.inc(1);
            }
            w.finish()?;
            Ok((n, failures))
        })
        .collect::<Result<_, _>>()?;
    let mut failures: Vec<FailureRecord> = Vec::new();
    let mut samples = 0;
    for (n, f) in parts {
        samples += n;
        failures.extend(f);
    }
    write_failures(out, &failures)?;
    let summary = ImportSummary {
        source: input.display().to_string(),
        settings: settings.clone(),
        rows,
        drives_in_input: drives.len(),
        drives: keep.len(),
        failed: failures.len(),
        samples,
        files: chunks.len(),
        time_convention: "day d = power-on hour h0 + 24 d, stamped min_date + d at 00:00 UTC; \
            failed_at = last sample + 12 h; SMART 9 = that power-on hour"
            .into(),
    };
    let path = out.join("import.json");
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| ImportError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&path, json).map_err(|source| ImportError::Io { path, source })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Trace;
    use indicatif::ProgressBar;

    const HEADER: &str = "\"serial_number\",\"model\",\"manufacturer\",\"n_fails\",\"n_records\",\"size_tb\",\"min_date\",\"max_date\",\"min_hours\",\"max_hours\",\"tstart\",\"tstop\",\"fails\",\"smart_5\",\"smart_10\",\"smart_12\",\"smart_187\",\"smart_188\",\"smart_189\",\"smart_196\",\"smart_197\",\"smart_198\",\"smart_197_bin\",\"smart_197_bin_cumsum\",\"smart_197_cumsum\"";

    fn write(dir: &Path, rows: &[&str]) -> PathBuf {
        let path = dir.join("hds.csv");
        std::fs::write(&path, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
        path
    }

    #[test]
    fn imports_daily_samples_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let input = write(
            dir.path(),
            &[
                // A drive that fails: 0 reallocated sectors for 2 days, then 8, then fails.
                "\"A1\",\"ST4000DM000\",\"ST\",1,4,4,\"2015-01-01\",\"2015-01-04\",100,172,100,148,0,0,,3,0,0,,,0,0,0,0,0",
                "\"A1\",\"ST4000DM000\",\"ST\",1,4,4,\"2015-01-01\",\"2015-01-04\",100,172,148,172,1,8,,3,0,0,,,0,0,0,0,0",
                // A healthy drive, one interval of 3 days.
                "\"B2\",\"HGST\",\"HGST\",0,3,4,\"2015-02-01\",\"2015-02-03\",10,82,10,82,0,0,0,1,0,0,0,0,0,0,0,0,0",
            ],
        );
        let out = dir.path().join("trace");
        let s = import_backblaze(
            &input,
            &out,
            &BackblazeImport::default(),
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!((s.drives, s.failed, s.rows), (2, 1, 3));
        let t = Trace::read_dir(&out, &ProgressBar::hidden()).unwrap();
        let a = &t.nodes[0];
        assert_eq!(a.node, "A1");
        assert!(a.ts.is_empty(), "SMART-only samples");
        // Hours 100..172: days 0, 1, 2, 3 (hours 100, 124, 148, 172).
        assert_eq!(a.smart.ts.len(), 4);
        let day0 = date_ms("2015-01-01").unwrap();
        assert_eq!(a.smart.ts[0], day0);
        assert_eq!(a.smart.column("disk", "5").unwrap(), &[0.0, 0.0, 8.0, 8.0]);
        assert_eq!(a.smart.column("disk", "9").unwrap()[1], 124.0);
        assert!(
            a.smart.column("disk", "10").is_none(),
            "unreported attributes stay absent"
        );
        assert_eq!(
            t.failures["A1"].failed_at_ms,
            day0 + 3 * DAY_MS + 12 * HOUR_MS
        );
        assert_eq!(t.failures["A1"].has_precursor(), None);
        assert!(!t.failures.contains_key("B2"));
        // Subsampling keeps every failed drive.
        let out2 = dir.path().join("trace2");
        let s2 = import_backblaze(
            &input,
            &out2,
            &BackblazeImport {
                healthy: Some(0),
                ..Default::default()
            },
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!((s2.drives, s2.failed), (1, 1));
    }

    #[test]
    fn bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = "\"B2\",\"HGST\",\"HGST\",0,3,4,\"2015-02-01\",\"2015-02-03\",10,82,10,82,0,0,0,1,0,0,0,0,0,0,0,0,0";
        for (bad, expect) in [
            (good.replace(",10,82,0,", ",82,10,0,"), "not after tstart"),
            (good.replace(",10,82,0,", ",10,82,7,"), "`fails`"),
            (good.replace("\"2015-02-01\"", "\"yesterday\""), "min_date"),
            (
                good.replace(",0,1,0,0,", ",-4,1,0,0,"),
                "is not a raw value",
            ),
            (good.replace(",10,82,0,", ",1e,82,0,"), "tstart"),
            (
                good.replace(",10,82,0,", ",10,9000000000000000000,0,"),
                "power-on hours",
            ),
        ] {
            let input = write(dir.path(), &[good, &bad]);
            let err = import_backblaze(
                &input,
                &dir.path().join("t"),
                &BackblazeImport::default(),
                &ProgressBar::hidden(),
            )
            .unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, ImportError::Row { line: 3, .. }) && msg.contains(expect),
                "{msg}"
            );
            assert!(msg.contains("hds.csv:3"), "{msg}");
        }
        std::fs::write(dir.path().join("h.csv"), "serial_number,tstart\nA,1\n").unwrap();
        let err = import_backblaze(
            &dir.path().join("h.csv"),
            &dir.path().join("t"),
            &BackblazeImport::default(),
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        assert!(matches!(err, ImportError::Column { .. }), "{err}");
    }
}

/// Checks against the real Backblaze export when it is present (it is never copied into the
/// repository): the import reproduces the counts and the signal the data's README states.
#[cfg(test)]
mod real_data {
    use super::*;
    use crate::trace::Trace;
    use indicatif::ProgressBar;

    fn data_path() -> PathBuf {
        let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        std::env::var_os("AUGUR_BACKBLAZE_HDS").map_or_else(
            || crate_dir.join("../../shared/data/real-failures/backblaze-hds/hds.csv.gz"),
            PathBuf::from,
        )
    }

    #[test]
    fn backblaze_import_matches_the_data_readme() {
        let path = data_path();
        if !path.exists() {
            println!(
                "SKIPPED backblaze_import_matches_the_data_readme (data not found at {})",
                path.display()
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let s = import_backblaze(
            &path,
            dir.path(),
            &BackblazeImport {
                healthy: Some(200),
                ..Default::default()
            },
            &ProgressBar::hidden(),
        )
        .unwrap();
        // README: 644,569 intervals, 87,068 drives, 5,326 failed drives.
        assert_eq!(
            (s.rows, s.drives_in_input, s.failed),
            (644_569, 87_068, 5_326)
        );
        assert_eq!(s.drives, 5_326 + 200);
        let t = Trace::read_dir(dir.path(), &ProgressBar::hidden()).unwrap();
        // README: at the last observation any of SMART 5/187/188/197/198 is above 0 in
        // 67.9% of failed drives (3,618 of 5,326).
        let mut signal = 0;
        for f in t.failures.values() {
            let n = t.nodes.iter().find(|n| n.node == f.node).unwrap();
            let last = n.smart.ts.len() - 1;
            assert!(n.smart.ts[last] < f.failed_at_ms, "{}", f.node);
            let any = ["5", "187", "188", "197", "198"].iter().any(|a| {
                n.smart
                    .column(BACKBLAZE_DEVICE, a)
                    .is_some_and(|c| c[last] > 0.0)
            });
            signal += any as usize;
        }
        assert_eq!(signal, 3_618);
    }
}
