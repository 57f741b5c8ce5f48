//! The autoencoder's input: per-metric normalisation fitted on healthy training data, and
//! the sequence of per-step means it reads.

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::WindowSpec;
use crate::sample::{metric, N_METRICS};
use crate::trace::NodeSeries;

/// Per-metric normalisation for the LSTM input, fitted on healthy training data.
///
/// Heavy-tailed metrics (latencies, throughputs, counts, loss) are log-compressed first so a
/// latency spike does not dominate the reconstruction loss; centre and scale are robust
/// (median, IQR) so the fit is not thrown by the very anomalies we look for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normaliser {
    /// Whether metric `i` is log1p-transformed first.
    pub log: Vec<bool>,
    /// Median of the transformed metric.
    pub center: Vec<f64>,
    /// Robust spread of the transformed metric (never below a floor).
    pub scale: Vec<f64>,
}

const LOG_METRICS: [usize; 8] = [
    metric::READ_LAT,
    metric::WRITE_LAT,
    metric::READ_MBPS,
    metric::WRITE_MBPS,
    metric::RTT,
    metric::LOSS,
    metric::NET_ERR,
    metric::ERR_LOG,
];

impl Normaliser {
    /// Fits on a sample of metric rows (NaNs ignored; all-NaN metrics get centre 0, scale 1).
    pub fn fit(rows: &[[f32; N_METRICS]]) -> Normaliser {
        let log: Vec<bool> = (0..N_METRICS).map(|m| LOG_METRICS.contains(&m)).collect();
        let mut center = vec![0.0; N_METRICS];
        let mut scale = vec![1.0; N_METRICS];
        for m in 0..N_METRICS {
            let mut v: Vec<f64> = rows
                .iter()
                .map(|r| transform(r[m] as f64, log[m]))
                .filter(|x| !x.is_nan())
                .collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
            center[m] = q(0.5);
            scale[m] = ((q(0.75) - q(0.25)) / 1.349).max(0.05);
        }
        Normaliser { log, center, scale }
    }

    /// Normalised value of metric `m`; NaN (absent sensor) maps to 0, the typical value, so
    /// the autoencoder neither sees nor learns anything from a missing sensor.
    pub fn apply(&self, m: usize, raw: f32) -> f64 {
        let x = transform(raw as f64, self.log[m]);
        if x.is_nan() {
            0.0
        } else {
            ((x - self.center[m]) / self.scale[m]).clamp(-10.0, 10.0)
        }
    }

    /// The LSTM input sequence ending at `t`: per-step means of normalised metrics. An empty
    /// step (lost samples, agent restart) repeats the previous step so gaps look flat, not
    /// like a sudden return to the mean. Dense steps are read with a stride (at most
    /// `SEQ_SAMPLES_PER_STEP` samples each).
    pub fn sequence(&self, series: &NodeSeries, t: i64, spec: &WindowSpec) -> Array2<f64> {
        self.sequence_with(series, t, spec, |i, m| self.apply(m, series.values[i][m]))
    }

    /// [`Self::sequence`] with sample `i`'s normalised metric `m` read from `apply(i, m)`
    /// (which must equal [`Self::apply`] of it): rounds 5 minutes apart share most of
    /// their samples, so training normalises each sample once instead of once per round.
    pub(crate) fn sequence_with(
        &self,
        series: &NodeSeries,
        t: i64,
        spec: &WindowSpec,
        apply: impl Fn(usize, usize) -> f64,
    ) -> Array2<f64> {
        let mut seq = Array2::<f64>::zeros((spec.seq_len, N_METRICS));
        let start = t - spec.seq_step_ms * spec.seq_len as i64;
        let mut prev: Option<usize> = None;
        for step in 0..spec.seq_len {
            let a = start + step as i64 * spec.seq_step_ms;
            let r = series.range(a, a + spec.seq_step_ms);
            if r.is_empty() {
                if let Some(p) = prev {
                    let row = seq.row(p).to_owned();
                    seq.row_mut(step).assign(&row);
                }
                continue;
            }
            // About one sample per minute is plenty for a 15-minute mean and is what the
            // autoencoder was trained on; a 5-second agent would otherwise cost 12x more here.
            let stride = (r.len() / SEQ_SAMPLES_PER_STEP).max(1);
            let n = r.clone().step_by(stride).count() as f64;
            for i in r.step_by(stride) {
                for m in 0..N_METRICS {
                    seq[[step, m]] += apply(i, m) / n;
                }
            }
            prev = Some(step);
        }
        seq
    }
}

/// Samples averaged per LSTM step at most (see [`Normaliser::sequence`]).
const SEQ_SAMPLES_PER_STEP: usize = 15;

fn transform(x: f64, log: bool) -> f64 {
    if log {
        x.max(0.0).ln_1p()
    } else {
        x
    }
}
