//! LSTM autoencoder, hand-written on ndarray: forward pass, backpropagation through time and
//! Adam. Trained on healthy windows only, so its reconstruction error measures how unlike
//! "normal" a window is — an anomaly score the tree model can weigh against everything else.
//!
//! Architecture: an encoder LSTM reads the sequence; its last hidden state `z` is the code; a
//! decoder LSTM receives `z` at every step and a linear layer maps its hidden state back to the
//! input space. Loss is the mean squared reconstruction error.

use indicatif::ProgressBar;
use ndarray::{concatenate, s, Array1, Array2, Axis, Zip};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One LSTM layer. Gate columns are ordered input, forget, output, candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LstmLayer {
    /// Weights, shape `(input + hidden, 4 * hidden)`.
    pub w: Array2<f64>,
    /// Biases, length `4 * hidden`.
    pub b: Array1<f64>,
}

/// What the backward pass needs from one forward step.
struct StepCache {
    xh: Array2<f64>,
    i: Array2<f64>,
    f: Array2<f64>,
    o: Array2<f64>,
    g: Array2<f64>,
    c_prev: Array2<f64>,
    tanh_c: Array2<f64>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl LstmLayer {
    fn new(input: usize, hidden: usize, rng: &mut impl Rng) -> Self {
        let bound = 1.0 / (hidden as f64).sqrt();
        let w = Array2::from_shape_simple_fn((input + hidden, 4 * hidden), || {
            rng.gen_range(-bound..bound)
        });
        let mut b = Array1::zeros(4 * hidden);
        // Forget-gate bias 1: remember by default, the usual fix for early vanishing gradients.
        b.slice_mut(s![hidden..2 * hidden]).fill(1.0);
        LstmLayer { w, b }
    }

    fn hidden(&self) -> usize {
        self.b.len() / 4
    }

    /// Runs the layer over `xs` (one `(batch, input)` matrix per step) from a zero state.
    fn forward(&self, xs: &[Array2<f64>], keep: bool) -> (Vec<Array2<f64>>, Vec<StepCache>) {
        let h_dim = self.hidden();
        let batch = xs.first().map_or(0, |x| x.nrows());
        let mut h = Array2::<f64>::zeros((batch, h_dim));
        let mut c = Array2::<f64>::zeros((batch, h_dim));
        let mut hs = Vec::with_capacity(xs.len());
        let mut caches = Vec::with_capacity(if keep { xs.len() } else { 0 });
        for x in xs {
            let xh = concatenate(Axis(1), &[x.view(), h.view()])
                .unwrap_or_else(|_| Array2::zeros((batch, x.ncols() + h_dim)));
            let a = xh.dot(&self.w) + &self.b;
            let i = a.slice(s![.., 0..h_dim]).mapv(sigmoid);
            let f = a.slice(s![.., h_dim..2 * h_dim]).mapv(sigmoid);
            let o = a.slice(s![.., 2 * h_dim..3 * h_dim]).mapv(sigmoid);
            let g = a.slice(s![.., 3 * h_dim..]).mapv(f64::tanh);
            let c_new = &f * &c + &i * &g;
            let tanh_c = c_new.mapv(f64::tanh);
            h = &o * &tanh_c;
            hs.push(h.clone());
            if keep {
                caches.push(StepCache {
                    xh,
                    i,
                    f,
                    o,
                    g,
                    c_prev: c,
                    tanh_c,
                });
            }
            c = c_new;
        }
        (hs, caches)
    }

    /// Backpropagation through time. `dhs[t]` is the loss gradient arriving at `h_t` from
    /// above. Accumulates weight gradients into `grad` and returns the gradient per input.
    fn backward(
        &self,
        caches: &[StepCache],
        dhs: &[Array2<f64>],
        grad: &mut LstmLayer,
    ) -> Vec<Array2<f64>> {
        let h_dim = self.hidden();
        let in_dim = self.w.nrows() - h_dim;
        let batch = dhs.first().map_or(0, |d| d.nrows());
        let mut dh_next = Array2::<f64>::zeros((batch, h_dim));
        let mut dc_next = Array2::<f64>::zeros((batch, h_dim));
        let mut dxs = vec![Array2::<f64>::zeros((batch, in_dim)); caches.len()];
        for t in (0..caches.len()).rev() {
            let k = &caches[t];
            let dh = &dhs[t] + &dh_next;
            let dc = &dc_next + &(&dh * &k.o * &k.tanh_c.mapv(|v| 1.0 - v * v));
            let mut da = Array2::<f64>::zeros((batch, 4 * h_dim));
            Zip::from(da.slice_mut(s![.., 0..h_dim]))
                .and(&dc)
                .and(&k.g)
                .and(&k.i)
                .for_each(|d, &dc, &g, &i| *d = dc * g * i * (1.0 - i));
            Zip::from(da.slice_mut(s![.., h_dim..2 * h_dim]))
                .and(&dc)
                .and(&k.c_prev)
                .and(&k.f)
                .for_each(|d, &dc, &cp, &f| *d = dc * cp * f * (1.0 - f));
            Zip::from(da.slice_mut(s![.., 2 * h_dim..3 * h_dim]))
                .and(&dh)
                .and(&k.tanh_c)
                .and(&k.o)
                .for_each(|d, &dh, &tc, &o| *d = dh * tc * o * (1.0 - o));
            Zip::from(da.slice_mut(s![.., 3 * h_dim..]))
                .and(&dc)
                .and(&k.i)
                .and(&k.g)
                .for_each(|d, &dc, &i, &g| *d = dc * i * (1.0 - g * g));
            grad.w += &k.xh.t().dot(&da);
            grad.b += &da.sum_axis(Axis(0));
            let dxh = da.dot(&self.w.t());
            dxs[t] = dxh.slice(s![.., 0..in_dim]).to_owned();
            dh_next = dxh.slice(s![.., in_dim..]).to_owned();
            dc_next = &dc * &k.f;
        }
        dxs
    }
}

/// The autoencoder: encoder, decoder and output projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LstmAutoencoder {
    /// Reads the input sequence.
    pub encoder: LstmLayer,
    /// Unrolls the code back into a sequence.
    pub decoder: LstmLayer,
    /// Projection from decoder hidden state to input space, `(hidden, input)`.
    pub out_w: Array2<f64>,
    /// Projection bias.
    pub out_b: Array1<f64>,
}

/// Training settings of the autoencoder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LstmConfig {
    /// Hidden units of both layers (also the code size).
    pub hidden: usize,
    /// Passes over the training windows.
    pub epochs: usize,
    /// Windows per Adam step.
    pub batch: usize,
    /// Adam step size.
    pub learning_rate: f64,
    /// Global gradient-norm clip; BPTT gradients occasionally explode.
    pub clip_norm: f64,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
}

impl Default for LstmConfig {
    fn default() -> Self {
        LstmConfig {
            hidden: 16,
            epochs: 12,
            batch: 32,
            learning_rate: 3e-3,
            clip_norm: 5.0,
            seed: 11,
        }
    }
}

/// Result of a forward pass kept for backpropagation.
struct Forward {
    enc_cache: Vec<StepCache>,
    dec_cache: Vec<StepCache>,
    dec_hs: Vec<Array2<f64>>,
    outputs: Vec<Array2<f64>>,
}

impl LstmAutoencoder {
    /// A freshly initialised autoencoder for `input`-dimensional steps.
    pub fn new(input: usize, hidden: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let bound = 1.0 / (hidden as f64).sqrt();
        LstmAutoencoder {
            encoder: LstmLayer::new(input, hidden, &mut rng),
            decoder: LstmLayer::new(hidden, hidden, &mut rng),
            out_w: Array2::from_shape_simple_fn((hidden, input), || rng.gen_range(-bound..bound)),
            out_b: Array1::zeros(input),
        }
    }

    /// Input dimension.
    pub fn input_dim(&self) -> usize {
        self.out_b.len()
    }

    fn zeros_like(&self) -> Self {
        LstmAutoencoder {
            encoder: LstmLayer {
                w: Array2::zeros(self.encoder.w.raw_dim()),
                b: Array1::zeros(self.encoder.b.raw_dim()),
            },
            decoder: LstmLayer {
                w: Array2::zeros(self.decoder.w.raw_dim()),
                b: Array1::zeros(self.decoder.b.raw_dim()),
            },
            out_w: Array2::zeros(self.out_w.raw_dim()),
            out_b: Array1::zeros(self.out_b.raw_dim()),
        }
    }

    /// Every parameter tensor, flattened views in a fixed order (for Adam and gradient checks).
    fn tensors_mut(&mut self) -> [ndarray::ArrayViewMutD<'_, f64>; 6] {
        [
            self.encoder.w.view_mut().into_dyn(),
            self.encoder.b.view_mut().into_dyn(),
            self.decoder.w.view_mut().into_dyn(),
            self.decoder.b.view_mut().into_dyn(),
            self.out_w.view_mut().into_dyn(),
            self.out_b.view_mut().into_dyn(),
        ]
    }

    fn forward(&self, xs: &[Array2<f64>], keep: bool) -> Forward {
        let (enc_hs, enc_cache) = self.encoder.forward(xs, keep);
        let batch = xs.first().map_or(0, |x| x.nrows());
        let z = enc_hs
            .last()
            .cloned()
            .unwrap_or_else(|| Array2::zeros((batch, self.encoder.hidden())));
        let zs = vec![z; xs.len()];
        let (dec_hs, dec_cache) = self.decoder.forward(&zs, keep);
        let outputs = dec_hs
            .iter()
            .map(|h| h.dot(&self.out_w) + &self.out_b)
            .collect();
        Forward {
            enc_cache,
            dec_cache,
            dec_hs,
            outputs,
        }
    }

    /// Mean squared reconstruction error per window; `xs` holds one `(batch, input)` matrix
    /// per time step.
    pub fn errors(&self, xs: &[Array2<f64>]) -> Vec<f64> {
        let fwd = self.forward(xs, false);
        let batch = xs.first().map_or(0, |x| x.nrows());
        let mut err = vec![0.0; batch];
        let denom = (xs.len() * self.input_dim()).max(1) as f64;
        for (x, y) in xs.iter().zip(&fwd.outputs) {
            for (b, e) in err.iter_mut().enumerate() {
                *e += x
                    .row(b)
                    .iter()
                    .zip(y.row(b))
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    / denom;
            }
        }
        err
    }

    /// Anomaly scores of many windows (each `(steps, input)`), batched for speed.
    pub fn score_windows(&self, windows: &[Array2<f64>]) -> Vec<f64> {
        let mut out = Vec::with_capacity(windows.len());
        for chunk in windows.chunks(256) {
            out.extend(self.errors(&to_steps(chunk)));
        }
        out
    }

    /// Loss and gradient of the mean squared reconstruction error over a batch.
    fn loss_and_grad(&self, xs: &[Array2<f64>]) -> (f64, LstmAutoencoder) {
        let fwd = self.forward(xs, true);
        let mut grad = self.zeros_like();
        let batch = xs.first().map_or(0, |x| x.nrows());
        let n = (batch * xs.len() * self.input_dim()).max(1) as f64;
        let mut loss = 0.0;
        let mut dec_dhs = Vec::with_capacity(xs.len());
        for ((x, y), h) in xs.iter().zip(&fwd.outputs).zip(&fwd.dec_hs) {
            let diff = y - x;
            loss += diff.iter().map(|d| d * d).sum::<f64>() / n;
            let dy = diff * (2.0 / n);
            grad.out_w += &h.t().dot(&dy);
            grad.out_b += &dy.sum_axis(Axis(0));
            dec_dhs.push(dy.dot(&self.out_w.t()));
        }
        let dzs = self
            .decoder
            .backward(&fwd.dec_cache, &dec_dhs, &mut grad.decoder);
        let mut dz = Array2::<f64>::zeros((batch, self.encoder.hidden()));
        for d in &dzs {
            dz += d;
        }
        let mut enc_dhs = vec![Array2::<f64>::zeros(dz.raw_dim()); xs.len()];
        if let Some(last) = enc_dhs.last_mut() {
            *last = dz;
        }
        self.encoder
            .backward(&fwd.enc_cache, &enc_dhs, &mut grad.encoder);
        (loss, grad)
    }

    /// Trains on healthy windows (each `(steps, input)`) with Adam; returns the final epoch's
    /// mean loss.
    pub fn train(
        &mut self,
        windows: &[Array2<f64>],
        cfg: &LstmConfig,
        progress: &ProgressBar,
    ) -> f64 {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut m = self.zeros_like();
        let mut v = self.zeros_like();
        let (beta1, beta2, eps) = (0.9, 0.999, 1e-8);
        let mut step = 0i32;
        let mut order: Vec<usize> = (0..windows.len()).collect();
        let mut last_loss = f64::NAN;
        progress.set_length((cfg.epochs * windows.len().div_ceil(cfg.batch.max(1))) as u64);
        for epoch in 0..cfg.epochs {
            order.shuffle(&mut rng);
            let mut total = 0.0;
            let mut batches = 0usize;
            for idx in order.chunks(cfg.batch.max(1)) {
                let chunk: Vec<Array2<f64>> = idx.iter().map(|&i| windows[i].clone()).collect();
                let (loss, mut grad) = self.loss_and_grad(&to_steps(&chunk));
                total += loss;
                batches += 1;
                let norm = grad
                    .tensors_mut()
                    .iter()
                    .map(|t| t.iter().map(|g| g * g).sum::<f64>())
                    .sum::<f64>()
                    .sqrt();
                let clip = if norm > cfg.clip_norm {
                    cfg.clip_norm / norm
                } else {
                    1.0
                };
                step += 1;
                let bc1 = 1.0 - f64::powi(beta1, step);
                let bc2 = 1.0 - f64::powi(beta2, step);
                let lr = cfg.learning_rate;
                for (((mut p, g), mut mm), mut vv) in self
                    .tensors_mut()
                    .into_iter()
                    .zip(grad.tensors_mut())
                    .zip(m.tensors_mut())
                    .zip(v.tensors_mut())
                {
                    Zip::from(&mut p)
                        .and(&g)
                        .and(&mut mm)
                        .and(&mut vv)
                        .for_each(|p, &g, m, v| {
                            let g = g * clip;
                            *m = beta1 * *m + (1.0 - beta1) * g;
                            *v = beta2 * *v + (1.0 - beta2) * g * g;
                            *p -= lr * (*m / bc1) / ((*v / bc2).sqrt() + eps);
                        });
                }
                progress.inc(1);
            }
            last_loss = total / batches.max(1) as f64;
            tracing::debug!(epoch, loss = last_loss, "lstm epoch");
        }
        last_loss
    }
}

/// Converts windows `(steps, input)` into per-step batch matrices `(batch, input)`.
pub fn to_steps(windows: &[Array2<f64>]) -> Vec<Array2<f64>> {
    let Some(first) = windows.first() else {
        return Vec::new();
    };
    let (steps, dim) = first.dim();
    (0..steps)
        .map(|t| {
            let mut x = Array2::<f64>::zeros((windows.len(), dim));
            for (b, w) in windows.iter().enumerate() {
                x.row_mut(b).assign(&w.row(t));
            }
            x
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_batch(steps: usize, batch: usize, dim: usize, seed: u64) -> Vec<Array2<f64>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..steps)
            .map(|_| Array2::from_shape_simple_fn((batch, dim), || rng.gen_range(-1.0..1.0)))
            .collect()
    }

    /// Finite-difference check of every parameter's gradient.
    #[test]
    fn gradients_match_finite_differences() {
        let mut model = LstmAutoencoder::new(3, 4, 42);
        // Larger weights than the initialiser gives, so every gate is far from linear.
        for mut t in model.tensors_mut() {
            t.mapv_inplace(|v| v * 2.0 + 0.1);
        }
        let xs = random_batch(5, 2, 3, 9);
        let (_, mut grad) = model.loss_and_grad(&xs);
        let eps = 1e-6;
        let mut worst = 0.0f64;
        let mut checked = 0;
        for k in 0..6 {
            let len = model.tensors_mut()[k].len();
            for j in 0..len {
                let orig = model.tensors_mut()[k].as_slice_mut().map(|s| s[j]).unwrap();
                model.tensors_mut()[k].as_slice_mut().unwrap()[j] = orig + eps;
                let plus = model.loss_and_grad(&xs).0;
                model.tensors_mut()[k].as_slice_mut().unwrap()[j] = orig - eps;
                let minus = model.loss_and_grad(&xs).0;
                model.tensors_mut()[k].as_slice_mut().unwrap()[j] = orig;
                let numeric = (plus - minus) / (2.0 * eps);
                let analytic = grad.tensors_mut()[k].as_slice_mut().unwrap()[j];
                let rel = (numeric - analytic).abs() / (numeric.abs() + analytic.abs()).max(1e-7);
                worst = worst.max(rel);
                checked += 1;
            }
        }
        assert_eq!(checked, (3 + 4) * 16 + 16 + (4 + 4) * 16 + 16 + 4 * 3 + 3);
        assert!(worst < 1e-5, "worst relative error {worst}");
    }

    #[test]
    fn training_reduces_loss_and_flags_anomalies() {
        // Healthy windows: smooth sinusoids; anomalies: the same plus a large step.
        let mut rng = StdRng::seed_from_u64(1);
        let healthy: Vec<Array2<f64>> = (0..192)
            .map(|_| {
                let phase: f64 = rng.gen_range(0.0..std::f64::consts::TAU);
                Array2::from_shape_fn((12, 3), |(t, d)| {
                    (phase + t as f64 * 0.4 + d as f64).sin() * 0.8
                })
            })
            .collect();
        let mut model = LstmAutoencoder::new(3, 8, 3);
        let before: f64 = model.score_windows(&healthy).iter().sum::<f64>() / 192.0;
        let cfg = LstmConfig {
            hidden: 8,
            epochs: 25,
            batch: 16,
            learning_rate: 1e-2,
            ..Default::default()
        };
        let after_loss = model.train(&healthy, &cfg, &ProgressBar::hidden());
        let after: f64 = model.score_windows(&healthy).iter().sum::<f64>() / 192.0;
        assert!(
            after < before * 0.5,
            "before {before} after {after} ({after_loss})"
        );
        let mut anomalous = healthy[0].clone();
        anomalous.slice_mut(s![6.., 0]).mapv_inplace(|v| v + 4.0);
        let a = model.score_windows(&[anomalous])[0];
        assert!(a > 5.0 * after, "anomaly {a} vs healthy {after}");
        // A round trip through JSON keeps the model exactly.
        let json = serde_json::to_string(&model).unwrap();
        let back: LstmAutoencoder = serde_json::from_str(&json).unwrap();
        assert_eq!(back, model);
    }
}
