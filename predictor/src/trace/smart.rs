//! SMART readings of one node, column-major.

use crate::sample::SmartReadings;

/// One SMART column: an attribute of one device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SmartColumn {
    /// Device name (`sda`, `nvme0n1`; `disk` in imported Backblaze traces).
    pub device: String,
    /// ATA attribute id or NVMe health-log field name.
    pub attr: String,
}

/// A node's SMART readings over time, column-major (one `f32` vector per device attribute,
/// parallel to `ts`, NaN where a reading lacks the attribute). Column-major because features
/// follow one attribute through time, and compact because a Backblaze import holds tens of
/// millions of drive-days.
#[derive(Debug, Clone, Default)]
pub struct SmartSeries {
    /// Reading times, ms, strictly increasing once [`NodeSeries::normalise_order`] ran.
    pub ts: Vec<i64>,
    /// The columns seen, in order of first appearance.
    pub columns: Vec<SmartColumn>,
    /// `values[c][i]`: column `c` at reading `i`.
    pub values: Vec<Vec<f32>>,
}

impl SmartSeries {
    /// Appends one reading (any order; [`NodeSeries::normalise_order`] sorts).
    pub fn push(&mut self, ts: i64, readings: &SmartReadings) {
        let row = self.ts.len();
        self.ts.push(ts);
        for col in &mut self.values {
            col.push(f32::NAN);
        }
        for (device, attrs) in readings {
            for (attr, &v) in attrs {
                let c = match self
                    .columns
                    .iter()
                    .position(|c| c.device == *device && c.attr == *attr)
                {
                    Some(c) => c,
                    None => {
                        self.columns.push(SmartColumn {
                            device: device.clone(),
                            attr: attr.clone(),
                        });
                        self.values.push(vec![f32::NAN; row + 1]);
                        self.columns.len() - 1
                    }
                };
                self.values[c][row] = v as f32;
            }
        }
    }

    /// Devices with at least one column, in first-seen order.
    pub fn devices(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for c in &self.columns {
            if !out.contains(&c.device.as_str()) {
                out.push(&c.device);
            }
        }
        out
    }

    /// The column of `device`'s attribute `attr`.
    pub fn column(&self, device: &str, attr: &str) -> Option<&[f32]> {
        self.columns
            .iter()
            .position(|c| c.device == device && c.attr == attr)
            .map(|c| &self.values[c][..])
    }

    /// Whether no reading is held.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub(super) fn normalise_order(&mut self) {
        if self.ts.windows(2).all(|w| w[0] < w[1]) {
            return;
        }
        let mut idx: Vec<usize> = (0..self.ts.len()).collect();
        idx.sort_by_key(|&i| self.ts[i]);
        idx.dedup_by_key(|i| self.ts[*i]);
        self.ts = idx.iter().map(|&i| self.ts[i]).collect();
        for col in &mut self.values {
            *col = idx.iter().map(|&i| col[i]).collect();
        }
    }

    pub(super) fn append(&mut self, other: SmartSeries) {
        let base = self.ts.len();
        let added = other.ts.len();
        self.ts.extend(other.ts);
        for col in &mut self.values {
            col.resize(base + added, f32::NAN);
        }
        for (column, values) in other.columns.into_iter().zip(other.values) {
            let c = match self.columns.iter().position(|c| *c == column) {
                Some(c) => c,
                None => {
                    self.columns.push(column);
                    self.values.push(vec![f32::NAN; base + added]);
                    self.columns.len() - 1
                }
            };
            self.values[c][base..].copy_from_slice(&values);
        }
    }
}
