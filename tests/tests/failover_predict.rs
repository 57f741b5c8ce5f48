//! Issue 11's first test, through `augur bench failover` (real processes, the shipped node
//! model, the simulated health source): a storage node with an injected fail-slow disk is
//! flagged by the risk policy, drained and emptied before it dies, while a client workload
//! runs throughout, with zero failed and zero `Indeterminate` requests and no shard ever below
//! RF (sampled every 250 ms).
//!
//! The node dies as soon as it is empty (`--die-when-drained`) or after 6 minutes, so the test
//! does not depend on how fast a loaded machine drains; the bench's own figures (README
//! "Performance") use a fixed death time instead.

use augur_tests::augur;
use serde_json::Value;
use std::path::Path;

#[test]
fn a_failing_node_is_drained_before_it_dies_and_no_request_fails() -> anyhow::Result<()> {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../predictor/models/default.model");
    if !model.exists() {
        eprintln!("skipped: no shipped node model at {}", model.display());
        return Ok(());
    }
    let out = augur(&[
        "bench",
        "failover",
        "--predict",
        "on",
        "--die-when-drained",
        "--death-after",
        "360s",
        "--clients",
        "8",
        "--keys",
        "5000",
        "--json",
    ])?;
    let r: Value = serde_json::from_str(&out)?;
    assert!(r["drained_after_s"].is_number(), "never drained: {r}");
    assert_eq!(r["replicas_at_death"], 0, "{r}");
    assert_eq!(r["failed_requests"], 0, "{r}");
    assert_eq!(r["indeterminate_requests"], 0, "{r}");
    assert_eq!(r["below_rf_s"].as_f64(), Some(0.0), "{r}");
    assert!(r["ok_requests"].as_u64().is_some_and(|n| n > 1000), "{r}");
    Ok(())
}
