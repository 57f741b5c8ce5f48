//! The incremental grid against `NodeSeries::resample` of the same samples.

use super::*;
use rand::{Rng, SeedableRng};

/// Rows with NaNs (absent sensors), counts and levels, at `interval_ms` with jitter and
/// occasional lost samples.
fn samples(n: usize, interval_ms: i64, seed: u64) -> Vec<(i64, [f32; N_METRICS])> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = 1_763_942_400_000i64 + rng.gen_range(0..interval_ms);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut row = [0.0f32; N_METRICS];
        for (m, v) in row.iter_mut().enumerate() {
            *v = if rng.gen_bool(0.05) {
                f32::NAN
            } else {
                rng.gen_range(0.0..10.0) * (m + 1) as f32
            };
        }
        out.push((t, row));
        let jitter = interval_ms / 20;
        t += interval_ms + rng.gen_range(-jitter..=jitter);
        if rng.gen_bool(0.002) {
            t += 40 * interval_ms; // an agent restart
        }
    }
    out
}

fn series_of(rows: &[(i64, [f32; N_METRICS])]) -> NodeSeries {
    NodeSeries {
        node: "n".into(),
        ts: rows.iter().map(|r| r.0).collect(),
        values: rows.iter().map(|r| r.1).collect(),
        ..Default::default()
    }
}

fn assert_same(grid: &NodeSeries, full: &NodeSeries, what: &str) {
    assert_eq!(grid.ts, full.ts, "{what}: timestamps");
    for (i, (a, b)) in grid.values.iter().zip(&full.values).enumerate() {
        let same = a
            .iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
        assert!(same, "{what}: row {i} differs: {a:?} vs {b:?}");
    }
}

/// A long history appended sample by sample with a bounded window (every append past the
/// capacity evicts the oldest): at many points the incremental grid is bit-identical to
/// `NodeSeries::resample` of the held samples, at 5 s, 20 s, 1 min and 10 min sampling
/// (all three of `resample`'s cases) and on a 1- and a 5-minute grid.
#[test]
fn incremental_grid_equals_full_resample_through_evictions() {
    for (interval, res, capacity, seed) in [
        (5_000i64, 60_000i64, 3_000usize, 1u64),
        (20_000, 60_000, 900, 2),
        (60_000, 60_000, 500, 3),
        (5_000, 300_000, 2_000, 4),
        (600_000, 60_000, 300, 5),
    ] {
        let rows = samples(capacity * 3, interval, seed);
        let mut grid = GridSeries::new("n", res);
        for (k, &(ts, row)) in rows.iter().enumerate() {
            if grid.len() == capacity {
                grid.evict_oldest();
            }
            grid.push(ts, row).unwrap();
            if k % 97 == 0 || k + 1 == rows.len() {
                let held = &rows[k + 1 - grid.len()..=k];
                let full = series_of(held);
                assert_eq!(grid.interval_ms(), full.interval_ms());
                let expect = full.resample(res);
                assert_same(
                    grid.series(),
                    &expect,
                    &format!("{interval} ms on {res} ms, sample {k}"),
                );
            }
        }
    }
}

/// The median interval changing case (5 s samples, then an hour at 1 min) rescales the
/// counts as `resample` would, and eviction down to one sample and to none is handled.
#[test]
fn interval_changes_and_eviction_to_empty() {
    let mut rows = samples(800, 5_000, 7);
    let t = rows.last().unwrap().0;
    rows.extend(samples(900, 60_000, 8).into_iter().map(|(ts, r)| {
        let first = 1_763_942_400_000i64;
        (t + 60_000 + (ts - first), r)
    }));
    let mut grid = GridSeries::new("n", 60_000);
    for (k, &(ts, row)) in rows.iter().enumerate() {
        grid.push(ts, row).unwrap();
        if k % 50 == 0 {
            assert_same(
                grid.series(),
                &series_of(&rows[..=k]).resample(60_000),
                &format!("append {k}"),
            );
        }
    }
    for k in 1..rows.len() {
        assert_eq!(grid.evict_oldest(), Some(rows[k - 1].0));
        if k % 50 == 0 || rows.len() - k < 3 {
            assert_same(
                grid.series(),
                &series_of(&rows[k..]).resample(60_000),
                &format!("evict {k}"),
            );
        }
    }
    assert_eq!(grid.evict_oldest(), Some(rows.last().unwrap().0));
    assert!(grid.is_empty() && grid.series().ts.is_empty());
    assert_eq!(grid.evict_oldest(), None);
    // Usable again after emptying.
    grid.push(5, [1.0; N_METRICS]).unwrap();
    assert_eq!(grid.series().ts, vec![5]);
}

#[test]
fn refuses_out_of_order_and_other_nodes() {
    let mut grid = GridSeries::new("a", 60_000);
    grid.push(10, [0.0; N_METRICS]).unwrap();
    assert_eq!(
        grid.push(10, [0.0; N_METRICS]),
        Err(GridError::OutOfOrder {
            ts_ms: 10,
            last_ms: 10
        })
    );
    let other = HealthSample {
        cpu_util: Some(0.5),
        ..HealthSample::empty("b", 20)
    };
    assert!(matches!(
        grid.push_sample(&other),
        Err(GridError::OtherNode { .. })
    ));
    assert_eq!(grid.len(), 1);
    assert!(!grid.push_sample(&HealthSample::empty("a", 30)).unwrap());
}

/// The running median is `select_nth_unstable(len / 2)` of the multiset, through
/// inserts and removals with many repeated values.
#[test]
fn running_median_matches_selection() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut m = RunningMedian::default();
    let mut held: std::collections::VecDeque<i64> = Default::default();
    for step in 0..5_000 {
        if held.len() > 200 || (!held.is_empty() && rng.gen_bool(0.3)) {
            let x = held.pop_front().unwrap();
            assert!(m.remove(x));
        } else {
            let x = rng.gen_range(0..20);
            held.push_back(x);
            m.insert(x);
        }
        let mut v: Vec<i64> = held.iter().copied().collect();
        let expect = (!v.is_empty()).then(|| {
            let mid = v.len() / 2;
            *v.select_nth_unstable(mid).1
        });
        assert_eq!(m.median(), expect, "step {step}");
    }
    assert!(!m.remove(1_000));
}

/// `set_resolution` re-grids the held samples.
#[test]
fn set_resolution_regrids() {
    let rows = samples(2_000, 5_000, 9);
    let mut grid = GridSeries::new("n", 60_000);
    for &(ts, row) in &rows {
        grid.push(ts, row).unwrap();
    }
    for _ in 0..333 {
        grid.evict_oldest();
    }
    grid.set_resolution(300_000);
    assert_eq!(grid.resolution_ms(), 300_000);
    assert_same(
        grid.series(),
        &series_of(&rows[333..]).resample(300_000),
        "5 min grid",
    );
}
