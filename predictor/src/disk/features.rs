//! SMART features of one device at one scoring time.
//!
//! Each attribute the model knows contributes its current raw value; error counters also
//! contribute how much they grew over the last day, week and month and how long ago they last
//! changed (a disk that reallocated sectors yesterday is not the disk that reallocated them
//! two years ago and has been quiet since). Features are defined by wall-clock spans over the
//! readings, so daily logs and the agent's hourly readings give the same numbers.

use serde::{Deserialize, Serialize};

use crate::trace::SmartSeries;

const DAY_MS: i64 = 86_400_000;

/// How an attribute relates to risk; declared per attribute, never guessed from a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrKind {
    /// An error counter: more is worse, and growth matters (ATA 5, 187, 197...; NVMe
    /// `media_errors`).
    Counter,
    /// A level whose relation to risk is unknown or not monotone (power-on hours: infant
    /// mortality and wear-out; temperature; power cycles).
    Level,
    /// A level where less is worse (NVMe `available_spare`).
    LowerIsWorse,
}

/// The kind of a SMART attribute by its ATA id or NVMe field name.
pub fn attr_kind(attr: &str) -> AttrKind {
    match attr {
        // Reallocated sectors, spin retries, end-to-end errors, reported uncorrectable,
        // command timeouts, high-fly writes, reallocation events, pending sectors, offline
        // uncorrectable, UDMA CRC errors; NVMe media errors, error-log entries, critical
        // warnings and the wear indicator.
        "5"
        | "10"
        | "184"
        | "187"
        | "188"
        | "189"
        | "196"
        | "197"
        | "198"
        | "199"
        | "media_errors"
        | "num_err_log_entries"
        | "critical_warning"
        | "percentage_used" => AttrKind::Counter,
        "available_spare" => AttrKind::LowerIsWorse,
        _ => AttrKind::Level,
    }
}

/// What the disk model reads, stored in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskFeatureSpec {
    /// Attributes, in feature order.
    pub attrs: Vec<String>,
    /// Growth spans of counters, ms (1, 7 and 30 days).
    pub spans_ms: Vec<i64>,
    /// A reading older than this is too stale to score, ms.
    pub stale_ms: i64,
    /// `days_since_change` saturates here, ms. `None` (models trained before it existed):
    /// uncapped.
    ///
    /// Why: a counter that never changed while the drive was watched reports the days since
    /// its first reading, which grows with the length of the log, not with anything about
    /// the drive. On Backblaze's data (which starts in 2013) the test year's drives had all
    /// been watched longer than any training drive of the same age, so, through the
    /// "longer quiet, less risk" constraint, every test-year drive looked safer: out-of-fold
    /// recall 0.21 fell to 0.05 on the test year at 7 days (0.40 to 0.12 at 30 days), and
    /// the single tree, which used the feature less, beat the model. Beyond three of the
    /// longest growth spans a counter's last change says little; capped there, the feature
    /// means the same in any year.
    #[serde(default)]
    pub quiet_cap_ms: Option<i64>,
}

impl DiskFeatureSpec {
    /// The spec for `attrs` with the default spans.
    pub fn new(attrs: Vec<String>) -> Self {
        DiskFeatureSpec {
            attrs,
            spans_ms: vec![DAY_MS, 7 * DAY_MS, 30 * DAY_MS],
            stale_ms: 7 * DAY_MS,
            quiet_cap_ms: Some(90 * DAY_MS),
        }
    }

    fn span_name(ms: i64) -> String {
        format!("{}d", ms / DAY_MS)
    }

    /// Feature names and their monotone direction (+1: risk may only rise with the feature,
    /// -1: only fall, 0: free), in row order.
    pub fn features(&self) -> Vec<(String, i8)> {
        let mut out = Vec::new();
        for a in &self.attrs {
            match attr_kind(a) {
                AttrKind::Counter => {
                    out.push((format!("smart_{a}_raw"), 1));
                    for &s in &self.spans_ms {
                        out.push((format!("smart_{a}_inc_{}", Self::span_name(s)), 1));
                    }
                    // Longer quiet since the last change: less risk.
                    out.push((format!("smart_{a}_days_since_change"), -1));
                }
                AttrKind::Level => out.push((format!("smart_{a}_raw"), 0)),
                AttrKind::LowerIsWorse => out.push((format!("smart_{a}_raw"), -1)),
            }
        }
        out.push(("smart_counters_nonzero".into(), 1));
        out
    }

    /// Number of features per row.
    pub fn n_features(&self) -> usize {
        self.features().len()
    }
}

/// Orders attribute names: ATA ids numerically, then NVMe names alphabetically.
pub fn attr_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u32>(), b.parse::<u32>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// One device's columns, prepared for extraction at many times.
pub struct DeviceView<'a> {
    ts: &'a [i64],
    /// Per spec attribute: the column (None when the device never reported it) and, per
    /// reading, the index of the reading where its value last changed.
    cols: Vec<Option<(&'a [f32], Vec<u32>)>>,
}

impl<'a> DeviceView<'a> {
    /// Prepares `device` of `smart` for `spec`.
    pub fn new(smart: &'a SmartSeries, device: &str, spec: &DiskFeatureSpec) -> Self {
        let cols = spec
            .attrs
            .iter()
            .map(|a| {
                smart.column(device, a).map(|col| {
                    let mut last = Vec::with_capacity(col.len());
                    for i in 0..col.len() {
                        let changed = i == 0 || col[i].to_bits() != col[i - 1].to_bits();
                        last.push(if changed { i as u32 } else { last[i - 1] });
                    }
                    (col, last)
                })
            })
            .collect();
        DeviceView {
            ts: &smart.ts,
            cols,
        }
    }

    /// Time of the first and the last reading.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((*self.ts.first()?, *self.ts.last()?))
    }

    /// Appends the features at `t` to `out` (see [`DiskFeatureSpec::features`]); `false`
    /// (and nothing appended) when no reading of the last `stale_ms` exists.
    pub fn extract(&self, spec: &DiskFeatureSpec, t: i64, out: &mut Vec<f32>) -> bool {
        let at = self.ts.partition_point(|&x| x <= t);
        if at == 0 || self.ts[at - 1] < t - spec.stale_ms {
            return false;
        }
        let i = at - 1;
        let mut nonzero = 0.0f32;
        for (a, col) in spec.attrs.iter().zip(&self.cols) {
            let kind = attr_kind(a);
            let Some((col, last_change)) = col else {
                let n = match kind {
                    AttrKind::Counter => 2 + spec.spans_ms.len(),
                    _ => 1,
                };
                out.extend(std::iter::repeat_n(f32::NAN, n));
                continue;
            };
            let now = col[i];
            out.push(now);
            if kind != AttrKind::Counter {
                continue;
            }
            if now > 0.0 {
                nonzero += 1.0;
            }
            for &span in &spec.spans_ms {
                let j = self.ts.partition_point(|&x| x <= t - span);
                out.push(if j == 0 { f32::NAN } else { now - col[j - 1] });
            }
            let since = self.ts[last_change[i] as usize];
            let quiet = spec
                .quiet_cap_ms
                .map_or(t - since, |cap| (t - since).min(cap));
            out.push((quiet as f64 / DAY_MS as f64) as f32);
        }
        out.push(nonzero);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::SmartReadings;

    fn reading(attrs: &[(&str, f64)]) -> SmartReadings {
        let mut r = SmartReadings::new();
        let d = r.entry("disk".to_string()).or_default();
        for &(a, v) in attrs {
            d.insert(a.to_string(), v);
        }
        r
    }

    #[test]
    fn counters_grow_and_age_levels_stay_raw() {
        let spec = DiskFeatureSpec::new(vec!["5".into(), "9".into(), "197".into()]);
        let names: Vec<String> = spec.features().into_iter().map(|f| f.0).collect();
        assert_eq!(names.len(), spec.n_features());
        let mut s = SmartSeries::default();
        // 40 daily readings; reallocated sectors go 0 -> 4 on day 30 and 4 -> 10 on day 38.
        for d in 0..40i64 {
            let five = if d >= 38 {
                10.0
            } else if d >= 30 {
                4.0
            } else {
                0.0
            };
            s.push(d * DAY_MS, &reading(&[("5", five), ("9", 24.0 * d as f64)]));
        }
        let view = DeviceView::new(&s, "disk", &spec);
        let mut row = Vec::new();
        assert!(view.extract(&spec, 39 * DAY_MS, &mut row));
        assert_eq!(row.len(), names.len());
        let at = |row: &[f32], n: &str| row[names.iter().position(|x| x == n).unwrap()];
        assert_eq!(at(&row, "smart_5_raw"), 10.0);
        assert_eq!(at(&row, "smart_5_inc_1d"), 0.0);
        assert_eq!(at(&row, "smart_5_inc_7d"), 6.0);
        assert_eq!(at(&row, "smart_5_inc_30d"), 10.0);
        assert_eq!(at(&row, "smart_5_days_since_change"), 1.0);
        // SMART 197 never reported; a counter quiet since the first reading saturates at
        // the cap instead of growing with the length of the log.
        let capped = DiskFeatureSpec {
            quiet_cap_ms: Some(20 * DAY_MS),
            ..spec.clone()
        };
        let mut quiet = Vec::new();
        assert!(view.extract(&capped, 25 * DAY_MS, &mut quiet));
        assert_eq!(at(&quiet, "smart_5_days_since_change"), 20.0);
        quiet.clear();
        let uncapped = DiskFeatureSpec {
            quiet_cap_ms: None,
            ..spec.clone()
        };
        assert!(view.extract(&uncapped, 25 * DAY_MS, &mut quiet));
        assert_eq!(at(&quiet, "smart_5_days_since_change"), 25.0);
        assert_eq!(at(&row, "smart_9_raw"), 24.0 * 39.0);
        assert!(at(&row, "smart_197_raw").is_nan(), "never reported");
        assert_eq!(at(&row, "smart_counters_nonzero"), 1.0);
        // Too early for a 30-day growth; too late for a stale reading.
        row.clear();
        assert!(view.extract(&spec, 10 * DAY_MS, &mut row));
        assert!(at(&row, "smart_5_inc_30d").is_nan());
        assert!(!view.extract(&spec, 60 * DAY_MS, &mut Vec::new()));
        assert!(!view.extract(&spec, -DAY_MS, &mut Vec::new()));
        // Directions are declared per attribute.
        let dirs: Vec<i8> = spec.features().into_iter().map(|f| f.1).collect();
        assert_eq!(
            dirs[names.iter().position(|x| x == "smart_9_raw").unwrap()],
            0
        );
        assert_eq!(
            dirs[names
                .iter()
                .position(|x| x == "smart_5_days_since_change")
                .unwrap()],
            -1
        );
        let mut attrs = vec!["media_errors", "197", "5", "available_spare"];
        attrs.sort_by(|a, b| attr_order(a, b));
        assert_eq!(attrs, ["5", "197", "available_spare", "media_errors"]);
    }
}
