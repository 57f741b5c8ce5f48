//! Bin grids for the boosted trees (see [`tail_grid`]).

/// Puts one feature column on a bin grid that resolves its tail: half of the `nbins` cut
/// points at weighted quantiles of all the values, half at quantiles (offset by half a step)
/// of the values other than the most common one, and every value rounded down to its cut.
///
/// Why: forust cuts each feature at `nbins` weighted quantiles of all its values. A symptom
/// that most nodes never show (a power supply that flaps, packet loss) is exactly zero on
/// 97% or more of the rows, so every quantile but the last one or two is zero and the
/// trees can only ask "any flapping at all?" or "more than a little?", never "down a
/// quarter of the time", which is where a dying supply parts from a benign one (a model
/// trained on a harder trace could split the 1-hour down share only at 0 and 0.067). With
/// its own quantiles the tail gets about `nbins / 2` cut points
/// wherever the feature varies. A dense feature (no dominant value) gets the two sets of
/// quantiles interleaved, about `nbins` cut points as before.
///
/// forust takes a column with at most `nbins + 1` distinct values as its own cut points, and
/// rounding each value down to its cut keeps every split `x < cut` the same for the raw
/// values scored later, so nothing changes at scoring. Missing values stay missing.
pub(super) fn tail_grid(col: &mut [f64], weights: &[f64], nbins: usize) {
    let mut vw: Vec<(f64, f64)> = col
        .iter()
        .zip(weights)
        .filter(|(v, _)| !v.is_nan())
        .map(|(&v, &w)| (v, w.max(0.0)))
        .collect();
    vw.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    // Distinct values with their total weight.
    let mut vals: Vec<(f64, f64)> = Vec::new();
    for (v, w) in vw {
        match vals.last_mut() {
            Some(last) if last.0 == v => last.1 += w,
            _ => vals.push((v, w)),
        }
    }
    let half = (nbins / 2).max(1);
    if vals.len() <= 2 * half + 1 {
        return; // forust cuts at every distinct value already
    }
    let mode = vals
        .iter()
        .enumerate()
        .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
        .map_or(0, |(i, _)| i);
    let mut grid = vec![vals[0].0];
    grid.extend(weighted_quantiles(&vals, None, half, 0.0));
    grid.extend(weighted_quantiles(&vals, Some(mode), half, 0.5));
    grid.sort_unstable_by(f64::total_cmp);
    grid.dedup();
    for v in col.iter_mut().filter(|v| !v.is_nan()) {
        let i = grid.partition_point(|&g| g <= *v);
        *v = grid[i.saturating_sub(1)];
    }
}

/// The values at cumulative weight shares `(i + offset) / steps`, `i` in `0..steps`, of the
/// distinct sorted `vals` (value, weight), leaving out the one at index `skip`.
fn weighted_quantiles(
    vals: &[(f64, f64)],
    skip: Option<usize>,
    steps: usize,
    offset: f64,
) -> Vec<f64> {
    let kept = |i: usize| Some(i) != skip;
    let total: f64 = vals
        .iter()
        .enumerate()
        .filter(|(i, _)| kept(*i))
        .map(|(_, x)| x.1)
        .sum();
    let mut out = Vec::with_capacity(steps);
    if total <= 0.0 {
        return out;
    }
    let mut cum = 0.0;
    let mut step = 0;
    for (i, &(v, w)) in vals.iter().enumerate() {
        if !kept(i) {
            continue;
        }
        cum += w;
        while step < steps && cum >= total * (step as f64 + offset) / steps as f64 {
            out.push(v);
            step += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gbt::{Gbt, GbtConfig};
    use rand::{Rng, SeedableRng};

    /// A zero-inflated column gets about half the bins in its tail; values are rounded down
    /// to cuts, missing values stay missing, and a dense column keeps about `nbins` levels.
    #[test]
    fn the_tail_of_a_zero_inflated_feature_gets_its_own_cuts() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 20_000;
        let raw: Vec<f64> = (0..n)
            .map(|i| match i % 100 {
                0 => f64::NAN,
                1..=3 => rng.gen_range(0.0..1.0),
                _ => 0.0,
            })
            .collect();
        let mut col = raw.clone();
        tail_grid(&mut col, &vec![1.0; n], 128);
        let mut cuts: Vec<f64> = col.iter().copied().filter(|v| !v.is_nan()).collect();
        cuts.sort_unstable_by(f64::total_cmp);
        cuts.dedup();
        assert!(cuts.len() <= 129, "{} cuts", cuts.len());
        let in_tail = cuts.iter().filter(|&&c| c > 0.0).count();
        assert!(in_tail >= 60, "{in_tail} cuts in the tail");
        for (r, q) in raw.iter().zip(&col) {
            assert_eq!(r.is_nan(), q.is_nan());
            if !r.is_nan() {
                assert!(q <= r && cuts.contains(q));
            }
        }
        let mut dense: Vec<f64> = (0..n).map(|_| rng.gen_range(0.0..1.0)).collect();
        tail_grid(&mut dense, &vec![1.0; n], 128);
        dense.sort_unstable_by(f64::total_cmp);
        dense.dedup();
        assert!((120..=129).contains(&dense.len()), "{} levels", dense.len());
        // Few distinct values are left alone.
        let mut few = vec![0.0, 1.0, 2.0, 1.0];
        tail_grid(&mut few, &[1.0; 4], 128);
        assert_eq!(few, [0.0, 1.0, 2.0, 1.0]);
    }

    /// A failure signal that lives in the tail of a zero-inflated feature (97% of rows at 0,
    /// benign ones spread over 0..0.5, failing ones at 0.55..1): plain quantile bins have
    /// no cut above 0.4, so 0.45 and 0.8 fall in one bin and score the same; tail bins cut
    /// between them.
    #[test]
    fn trees_split_inside_the_tail_only_with_tail_bins() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let n = 100_000;
        let (mut rows, mut y) = (Vec::new(), Vec::new());
        for i in 0..n {
            let (x, label) = match i % 1000 {
                0..=29 => (rng.gen_range(0.001..0.5), 0.0),
                30 => (rng.gen_range(0.55..1.0), 1.0),
                _ => (0.0, 0.0),
            };
            rows.extend_from_slice(&[x, rng.gen_range(0.0..1.0)]);
            y.push(label);
        }
        let fit = |tail_bins| {
            let cfg = GbtConfig {
                iterations: 30,
                max_depth: 3,
                tail_bins,
                ..Default::default()
            };
            Gbt::fit(&rows, 2, &y, &vec![1.0; n], &[1, 0], &cfg).unwrap()
        };
        let gap = |g: &Gbt| g.margin(&[0.8, 0.5]) - g.margin(&[0.45, 0.5]);
        let (plain, tail) = (fit(false), fit(true));
        assert!(gap(&plain).abs() < 1e-9, "plain bins: {}", gap(&plain));
        assert!(gap(&tail) > 2.0, "tail bins: {}", gap(&tail));
    }
}
