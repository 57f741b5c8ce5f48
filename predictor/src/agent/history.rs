//! The agent's bounded local history, and the node model's grid of it kept as samples arrive.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::model::{Model, ModelError, Risk};
use crate::sample::HealthSample;
use crate::trace::GridSeries;

/// Shared access to the agent's bounded local history.
///
/// Two bounds: the latest `capacity` samples (the node model reads 72 h of them), and, apart,
/// the latest `smart_capacity` samples that carry SMART (the disk model reads a month of
/// hourly readings, which the first bound would evict after three days).
///
/// The node model's one-minute grid of the recent samples is kept as they arrive (see
/// [`GridSeries`]), so [`Self::score_node`] costs about the same at 5-second sampling as at
/// one minute instead of copying and resampling 51,840 samples every round.
#[derive(Debug, Clone)]
pub struct HistoryHandle {
    inner: Arc<Mutex<History>>,
    capacity: usize,
    smart_capacity: usize,
}

#[derive(Debug)]
struct History {
    recent: VecDeque<HealthSample>,
    smart: VecDeque<HealthSample>,
    /// The node model's grid of `recent`: equal to `GridSeries::from_samples(&recent)` unless
    /// `stale`.
    grid: GridSeries,
    /// `grid` no longer mirrors `recent` and is rebuilt from it before scoring.
    stale: bool,
    /// Arrival number of `recent.front()`, and of the next sample pushed.
    front_seq: i64,
    next_seq: i64,
    /// Arrival number of the newest sample that came out of time order (a node-metric sample
    /// not after every earlier one) or from another node than the sample before it. While
    /// such a sample is held, `recent` is not one node's time-ordered run, so the grid cannot
    /// follow it incrementally (`NodeSeries::from_samples` would sort, deduplicate and pick a
    /// node): it is rebuilt from `recent` at every scoring until the sample is evicted.
    disorder: Option<i64>,
    /// Newest node-metric timestamp pushed, and the node of the last sample pushed.
    max_ts: Option<i64>,
    last_node: Option<String>,
}

impl History {
    fn disorder_held(&self) -> bool {
        self.disorder.is_some_and(|d| d >= self.front_seq)
    }
}

impl HistoryHandle {
    /// An empty history of `capacity` recent samples and `smart_capacity` SMART readings
    /// beyond them (the agent makes one from [`super::AgentConfig`]; replays and `bench`
    /// fill one with [`Self::push`]).
    pub fn new(capacity: usize, smart_capacity: usize) -> Self {
        let resolution = crate::features::WindowSpec::default().resolution_ms;
        HistoryHandle {
            inner: Arc::new(Mutex::new(History {
                recent: VecDeque::with_capacity(capacity.min(1 << 16)),
                smart: VecDeque::new(),
                grid: GridSeries::new("", resolution),
                stale: false,
                front_seq: 0,
                next_seq: 0,
                disorder: None,
                max_ts: None,
                last_node: None,
            })),
            capacity: capacity.max(1),
            smart_capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        // A panic elsewhere while holding the lock leaves the deques intact: keep using them;
        // the grid is rebuilt from them in case the panic came mid-update.
        self.inner.lock().unwrap_or_else(|p| {
            let mut h = PoisonError::into_inner(p);
            h.stale = true;
            h
        })
    }

    /// Appends one sample (what the agent does with every sample it collects), evicting the
    /// oldest past the capacity, and keeps the grid in step.
    pub fn push(&self, s: HealthSample) {
        let mut h = self.lock();
        if s.smart.is_some() && self.smart_capacity > 0 {
            if h.smart.len() == self.smart_capacity {
                h.smart.pop_front();
            }
            h.smart.push_back(s.clone());
        }
        if h.recent.len() >= self.capacity {
            if let Some(old) = h.recent.pop_front() {
                h.front_seq += 1;
                // Not stale: `recent` is one node's time-ordered run and the grid mirrors
                // it, so the evicted sample is the grid's oldest.
                if !h.stale && old.has_node_metrics() {
                    h.grid.evict_oldest();
                }
            }
        }
        let seq = h.next_seq;
        h.next_seq += 1;
        let metrics = s.has_node_metrics();
        let out_of_order = metrics && h.max_ts.is_some_and(|m| s.ts_ms <= m);
        let other_node = h.last_node.as_ref().is_some_and(|n| *n != s.node);
        if out_of_order || other_node {
            h.disorder = Some(seq);
            h.stale = true;
        }
        if metrics {
            h.max_ts = Some(h.max_ts.map_or(s.ts_ms, |m| m.max(s.ts_ms)));
        }
        if h.last_node.as_deref() != Some(s.node.as_str()) {
            h.last_node = Some(s.node.clone());
        }
        if !h.stale {
            if h.recent.is_empty() {
                let res = h.grid.resolution_ms();
                h.grid = GridSeries::new(&s.node, res);
            }
            if h.grid.push_sample(&s).is_err() {
                h.stale = true;
            }
        }
        h.recent.push_back(s);
    }

    /// Puts samples older than every held one in front of the history (a simulated node's
    /// synthesised past, so a demo's long windows are filled at start), bounded by the
    /// capacities like any other sample: the oldest are dropped first. Samples not older than
    /// the oldest held one, and samples of another node than the history's, are ignored.
    pub fn backfill(&self, mut samples: Vec<HealthSample>) {
        let mut h = self.lock();
        let node = match h.recent.front().or(samples.first()) {
            Some(s) => s.node.clone(),
            None => return,
        };
        let first = h.recent.iter().map(|s| s.ts_ms).min().unwrap_or(i64::MAX);
        samples.retain(|s| s.node == node && s.ts_ms < first);
        samples.sort_by_key(|s| s.ts_ms);
        samples.dedup_by_key(|s| s.ts_ms);
        let room = self.capacity.saturating_sub(h.recent.len());
        let skip = samples.len().saturating_sub(room);
        if self.smart_capacity > 0 {
            let smart_first = h.smart.front().map_or(i64::MAX, |s| s.ts_ms);
            let older = samples
                .iter()
                .rev()
                .filter(|s| s.smart.is_some() && s.ts_ms < smart_first);
            for s in older {
                if h.smart.len() >= self.smart_capacity {
                    break;
                }
                h.smart.push_front(s.clone());
            }
        }
        let kept = samples.len() - skip;
        for s in samples.into_iter().skip(skip).rev() {
            h.recent.push_front(s);
        }
        if kept > 0 {
            // Older, time-ordered, of the same node: no disorder, but the grid is rebuilt.
            h.front_seq -= kept as i64;
            h.stale = true;
            if h.last_node.is_none() {
                h.last_node = Some(node);
            }
            if h.max_ts.is_none() {
                h.max_ts = h
                    .recent
                    .iter()
                    .filter(|s| s.has_node_metrics())
                    .map(|s| s.ts_ms)
                    .max();
            }
        }
    }

    /// A copy of the samples currently held, oldest first (what `Model::score_samples` and
    /// `DiskModel::score_samples` take): the SMART readings older than the recent window,
    /// then the recent window.
    pub fn snapshot(&self) -> Vec<HealthSample> {
        let h = self.lock();
        let from = h.recent.front().map_or(i64::MAX, |s| s.ts_ms);
        h.smart
            .iter()
            .filter(|s| s.ts_ms < from)
            .chain(h.recent.iter())
            .cloned()
            .collect()
    }

    /// The samples of [`Self::snapshot`] that carry SMART, all the disk model reads: a few
    /// hundred hourly readings, where the snapshot copies every 5-second sample too.
    pub fn smart_snapshot(&self) -> Vec<HealthSample> {
        let h = self.lock();
        let from = h.recent.front().map_or(i64::MAX, |s| s.ts_ms);
        h.smart
            .iter()
            .filter(|s| s.ts_ms < from)
            .chain(h.recent.iter().filter(|s| s.smart.is_some()))
            .cloned()
            .collect()
    }

    /// The node model's risk of the recent window at its newest sample, with three reasons:
    /// the same as `model.score_samples` of the recent window, from the grid kept as samples
    /// arrived. Holds the history's lock while scoring (well under a millisecond), so the
    /// agent's next append waits for it rather than the scorer copying the history.
    ///
    /// The SMART readings older than the recent window, which [`Self::snapshot`] also
    /// returns, are not read: they are for the disk model, and the node model's windows
    /// (72 h at most) lie inside the recent window.
    pub fn score_node(&self, model: &Model) -> Result<Risk, ModelError> {
        let mut h = self.lock();
        let res = model.window.resolution_ms;
        if h.stale {
            let grid = GridSeries::from_samples(h.recent.iter(), res);
            h.grid = grid;
            h.stale = h.disorder_held();
        }
        model.score_grid(&mut h.grid)
    }

    /// Samples held in the recent window.
    pub fn len(&self) -> usize {
        self.lock().recent.len()
    }

    /// Whether no sample is held yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::simulated::SimulatedSource;
    use crate::agent::Collector;
    use crate::generate::FaultKind;
    use crate::trace::NodeSeries;

    fn default_model() -> Model {
        // The crate directory at run time (see model.rs's tests).
        let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        Model::load(&crate_dir.join("models/default.model")).unwrap()
    }

    fn recent(h: &HistoryHandle) -> Vec<HealthSample> {
        h.lock().recent.iter().cloned().collect()
    }

    #[test]
    fn history_keeps_smart_readings_longer_than_the_recent_window() {
        let h = HistoryHandle::new(3, 2);
        let smart = |ts| HealthSample {
            smart: Some(
                [("sda".to_string(), [("5".to_string(), 1.0)].into())]
                    .into_iter()
                    .collect(),
            ),
            ..HealthSample::empty("n", ts)
        };
        let plain = |ts| HealthSample {
            cpu_util: Some(0.1),
            ..HealthSample::empty("n", ts)
        };
        h.push(smart(1));
        h.push(smart(2));
        h.push(smart(3));
        for ts in 4..10 {
            h.push(plain(ts));
        }
        let ts: Vec<i64> = h.snapshot().iter().map(|s| s.ts_ms).collect();
        // SMART readings 2 and 3 survive (capacity 2), the recent window is 7, 8, 9.
        assert_eq!(ts, vec![2, 3, 7, 8, 9]);
        assert_eq!(h.len(), 3);
        let smart_ts: Vec<i64> = h.smart_snapshot().iter().map(|s| s.ts_ms).collect();
        assert_eq!(smart_ts, vec![2, 3]);
    }

    /// The storage node's path: a 5-second agent's history appended sample by sample past
    /// its capacity (every append evicting the oldest), with a fault partway. At every
    /// scoring round the risk from the incrementally kept grid equals, exactly (probability,
    /// anomaly and reasons), `score_samples` of the same samples, and the grid equals
    /// `NodeSeries::resample` of them.
    #[test]
    fn incremental_risk_equals_score_samples_through_evictions() {
        let model = default_model();
        let mut src = SimulatedSource::healthy("s-inc", 5, 5_000);
        let injector = src.injector();
        let t0 = 1_763_942_400_000i64;
        let hour = 3_600_000i64;
        // 8 h held, 14 h appended: 6 h of evictions, the fault in the last 3 h.
        injector.inject(FaultKind::ErrorBurst, t0 + 11 * hour, 2 * hour);
        injector.inject(FaultKind::FailSlowDisk, t0 + 11 * hour, 2 * hour);
        let h = HistoryHandle::new(8 * 720, 0);
        let mut rounds = 0;
        let mut calm = None;
        for i in 0..14 * 720 {
            let Some(s) = src.collect(t0 + i * 5_000).unwrap() else {
                continue;
            };
            h.push(s);
            // Every 347 samples (28 min 55 s): rounds fall mid-minute, so the oldest bucket
            // is partial (its first samples evicted) and the newest unfinished.
            if i % 347 != 346 {
                continue;
            }
            rounds += 1;
            let held = recent(&h);
            let incremental = h.score_node(&model);
            let full = model.score_samples(&held);
            match (incremental, full) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "round at sample {i}");
                    if i < 11 * 720 {
                        calm = Some(a.probability);
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("round at sample {i}: {a:?} vs {b:?}"),
            }
            let expect = NodeSeries::from_samples(&held);
            let expect = expect.resample(model.window.resolution_ms);
            let mut guard = h.lock();
            let grid = guard.grid.series();
            assert_eq!(grid.ts, expect.ts);
            for (a, b) in grid.values.iter().zip(&expect.values) {
                assert!(a
                    .iter()
                    .zip(b)
                    .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())));
            }
        }
        assert_eq!(rounds, 29);
        // The fault shows through the incremental path as through the full one.
        let sick = h.score_node(&model).unwrap();
        let calm = calm.unwrap();
        assert!(sick.probability > calm, "calm {calm} sick {sick:?}");
    }

    /// Samples out of time order, repeated, or of another node make the history fall back to
    /// rebuilding the grid from the held samples (as `score_samples` reads them) until they
    /// are evicted; the risk stays equal to `score_samples` of the held samples throughout.
    #[test]
    fn disorder_falls_back_to_the_full_rebuild_until_evicted() {
        let model = default_model();
        let mut src = SimulatedSource::healthy("s-dis", 6, 60_000);
        let t0 = 1_763_942_400_000i64;
        let h = HistoryHandle::new(600, 0);
        let check = |h: &HistoryHandle, what: &str| {
            let held = recent(h);
            match (h.score_node(&model), model.score_samples(&held)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}"),
                (a, b) => panic!("{what}: {a:?} vs {b:?}"),
            }
        };
        let mut samples: Vec<HealthSample> = (0..2_000)
            .map(|i| src.collect(t0 + i * 60_000).unwrap().unwrap())
            .collect();
        samples.swap(700, 702); // out of order
        samples[800] = samples[799].clone(); // repeated timestamp
        samples[900].node = "intruder".into(); // another node
        for (i, s) in samples.into_iter().enumerate() {
            h.push(s);
            if i % 50 == 0 || (690..=720).contains(&i) {
                check(&h, &format!("after sample {i}"));
            }
        }
        let guard = h.lock();
        assert!(!guard.disorder_held(), "the disorder was evicted");
    }

    /// Backfilled samples sit in front of the live ones, bounded by the capacity; scoring
    /// reads them like pushed samples.
    #[test]
    fn backfill_goes_in_front_and_is_bounded() {
        let model = default_model();
        let t0 = 1_763_942_400_000i64;
        let mut past = SimulatedSource::healthy("s-bf", 8, 60_000);
        let backfill: Vec<HealthSample> = (0..900)
            .map(|i| past.collect(t0 + i * 60_000).unwrap().unwrap())
            .collect();
        let h = HistoryHandle::new(1_000, 0);
        let mut live = SimulatedSource::healthy("s-bf", 8, 5_000);
        let start = t0 + 900 * 60_000;
        for i in 0..300 {
            h.push(live.collect(start + i * 5_000).unwrap().unwrap());
        }
        let mut with_overlap = backfill.clone();
        with_overlap.push(live.collect(start + 10 * 5_000).unwrap().unwrap()); // not older
        h.backfill(with_overlap);
        let held = recent(&h);
        assert_eq!(held.len(), 1_000);
        assert_eq!(held[0].ts_ms, backfill[200].ts_ms, "oldest dropped first");
        assert!(held.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms));
        assert_eq!(
            h.score_node(&model).unwrap(),
            model.score_samples(&held).unwrap()
        );
        for i in 300..600 {
            h.push(live.collect(start + i * 5_000).unwrap().unwrap());
            if i % 100 == 0 {
                let held = recent(&h);
                assert_eq!(
                    h.score_node(&model).unwrap(),
                    model.score_samples(&held).unwrap()
                );
            }
        }
    }
}
