//! How large each shard is, estimated cheaply enough to say in every heartbeat: a move's
//! progress needs a total, and counting a shard exactly is a whole-shard read.
//!
//! RocksDB estimates the bytes of a key range in its files from the index blocks alone.
//! Those are stored bytes (compressed, with index and filter blocks); the copy counts raw key
//! and value bytes. The data column family's table properties (raw bytes) over the size of
//! its live files give its raw-to-stored ratio, which scales the file bytes back.
//! Data files are cut per shard (see the partitioner in [`super::Engine::open`]), so a
//! shard's range covers its own files. What sits in the memtables is left out: at most a
//! memtable's worth per node, and the estimate is a progress bar's total, not a measure.

use super::{data_key, shard_prefix, Engine, CF_DATA};
use augur_proto::ShardId;

impl Engine {
    /// Approximate raw bytes of keys and values of each of `shards` in the data files, in
    /// the order given (0 for a shard with nothing flushed).
    pub fn size_estimates(&self, shards: &[ShardId]) -> Vec<u64> {
        let Ok(cf) = self.cf(CF_DATA) else {
            return vec![0; shards.len()];
        };
        let stored = self
            .db
            .property_int_value_cf(cf, "rocksdb.live-sst-files-size")
            .ok()
            .flatten()
            .unwrap_or(0);
        let expansion = self
            .db
            .property_value_cf(cf, "rocksdb.aggregated-table-properties")
            .ok()
            .flatten()
            .and_then(|p| expansion(&p, stored))
            .unwrap_or(1.0);
        let bounds: Vec<(Vec<u8>, Vec<u8>)> = shards
            .iter()
            .map(|s| {
                let end = match s.0.checked_add(1) {
                    Some(next) => shard_prefix(ShardId(next)).to_vec(),
                    // The last shard id: everything after its prefix.
                    None => vec![0xff; 9],
                };
                (data_key(*s, &[]), end)
            })
            .collect();
        let ranges: Vec<rocksdb::Range<'_>> = bounds
            .iter()
            .map(|(a, b)| rocksdb::Range::new(a, b))
            .collect();
        self.db
            .get_approximate_sizes_cf(cf, &ranges)
            .into_iter()
            .map(|stored| (stored as f64 * expansion) as u64)
            .collect()
    }
}

/// Raw key and value bytes per byte of the live files (`stored`), the raw figures read from
/// the text of RocksDB's `aggregated-table-properties` (`...; raw key size=N; ...; raw value
/// size=N; ...`). `None` when a figure is missing or nothing is stored yet.
fn expansion(properties: &str, stored: u64) -> Option<f64> {
    let figure = |name: &str| -> Option<f64> {
        properties.split(';').find_map(|part| {
            let (k, v) = part.split_once('=')?;
            (k.trim() == name).then(|| v.trim().parse::<f64>().ok())?
        })
    };
    let raw = figure("raw key size")? + figure("raw value size")?;
    (stored > 0 && raw > 0.0).then(|| raw / stored as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expansion_is_read_from_the_table_properties() {
        let p = "# data blocks=3; # entries=90; raw key size=1620; raw average key size=18; \
                 raw value size=9360; raw average value size=104; data block size=2745; \
                 index block size (user-key? 1, delta-value? 1)=52";
        let e = expansion(p, 4000).unwrap();
        assert!((e - (1620.0 + 9360.0) / 4000.0).abs() < 1e-9, "{e}");
        assert_eq!(expansion(p, 0), None, "no files");
        assert_eq!(
            expansion("# entries=0; raw key size=0; raw value size=0", 10),
            None
        );
        assert_eq!(expansion("garbage", 10), None);
        assert_eq!(expansion("raw key size=x; raw value size=1", 10), None);
    }
}
