use super::*;

#[test]
fn unavailability_is_the_union_of_the_long_gaps() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut s = Seen::default();
    // Shard 1 answers every 100 ms, then nothing from 1,000 to 4,000 ms.
    for ms in (0..=1_000).step_by(100) {
        s.answered(ShardId(1), at(ms));
    }
    s.answered(ShardId(1), at(4_000));
    // Shard 2 is silent from 3,000 to 5,000 ms: overlaps shard 1's gap.
    s.answered(ShardId(2), at(3_000));
    s.answered(ShardId(2), at(5_000));
    // Shard 3 has only short gaps.
    for ms in (0..=5_000).step_by(900) {
        s.answered(ShardId(3), at(ms));
    }
    // Union: [1,000, 5,000] = 4 s; nothing open at the end (5,000 ms).
    let u = s.unavailable_s(at(5_000));
    assert!((u - 4.0).abs() < 1e-6, "{u}");
    // An open stretch at the end counts too: shard 1 last answered at 4,000 ms.
    let u = s.unavailable_s(at(7_000));
    assert!((u - 6.0).abs() < 1e-6, "{u}");
}

#[test]
fn errors_are_counted_by_kind_and_indeterminate_apart() {
    let ms = Duration::from_millis;
    let mut s = Seen::default();
    s.record(Ok(()), ms(3));
    s.record(
        Err(augur_client::Error::Indeterminate("lost".into())),
        ms(1_200),
    );
    s.record(
        Err(augur_client::Error::Unavailable("no leader".into())),
        ms(900),
    );
    s.record(Ok(()), ms(8_400));
    assert_eq!(s.ok, 2);
    assert_eq!(s.indeterminate, 1);
    assert_eq!(s.errors.values().sum::<u64>(), 2);
    assert_eq!(s.errors.get("indeterminate"), Some(&1));
    // Slow calls count whether answered or not: a call that waited out a failover and then
    // succeeded is the reactive path's cost.
    assert_eq!((s.slow, s.slowest), (2, ms(8_400)));
}

#[test]
fn probe_keys_land_on_their_shard() {
    for s in 1..=16 {
        let k = probe_key(ShardId(s), 16);
        assert_eq!(shard_of(&k, 16), ShardId(s));
    }
}
