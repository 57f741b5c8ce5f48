//! Splitting nodes by a hash of their id: which nodes train and which test, and the folds of
//! cross-validation.
//!
//! A hash of the id (not the order of a file, not a random draw) puts a node on the same side
//! in every run, on every machine, whatever other nodes the trace holds, so a model file can
//! record its split and `eval` can find the nodes the model never saw.

use std::hash::Hasher;

use serde::{Deserialize, Serialize};

/// The position of `node` in [0, 1) under `salt`: FNV-1a 64 of the salt and the id, then
/// MurmurHash3's 64-bit finaliser, because FNV alone leaves the high bits of short, similar
/// ids (serial numbers differing in the last digit) poorly mixed.
pub fn hash_unit(node: &str, salt: u64) -> f64 {
    let mut h = fnv::FnvHasher::default();
    h.write(&salt.to_le_bytes());
    h.write(node.as_bytes());
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Which nodes train and which test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeSplit {
    /// Fraction of nodes that train (the rest test).
    pub train_frac: f64,
    /// Salt of the hash: another salt is another split of the same fleet.
    pub salt: u64,
}

impl Default for NodeSplit {
    fn default() -> Self {
        NodeSplit {
            train_frac: 0.7,
            salt: 0,
        }
    }
}

impl NodeSplit {
    /// Every node trains (no held-out nodes).
    pub fn all() -> Self {
        NodeSplit {
            train_frac: 1.0,
            salt: 0,
        }
    }

    /// Whether `node` is a training node.
    pub fn is_train(&self, node: &str) -> bool {
        hash_unit(node, self.salt) < self.train_frac
    }

    /// The cross-validation fold of a training node, in `0..folds`. Drawn from another
    /// hash than the split, so folds are not a slice of the split's order.
    pub fn fold(&self, node: &str, folds: usize) -> usize {
        let u = hash_unit(node, self.salt ^ 0x5EED_F01D_0000_0001);
        ((u * folds as f64) as usize).min(folds.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stable_and_near_its_fraction() {
        let split = NodeSplit::default();
        let nodes: Vec<String> = (0..20_000).map(|i| format!("Z30{i:05}")).collect();
        let train = nodes.iter().filter(|n| split.is_train(n)).count();
        assert!((13_600..14_400).contains(&train), "{train}");
        // The same id lands on the same side whatever else is in the fleet.
        assert_eq!(split.is_train("Z3000042"), split.is_train("Z3000042"));
        assert_eq!(hash_unit("Z3000042", 0), hash_unit("Z3000042", 0));
        assert_ne!(hash_unit("Z3000042", 0), hash_unit("Z3000042", 1));
        let mut per_fold = [0usize; 5];
        for n in &nodes {
            per_fold[split.fold(n, 5)] += 1;
        }
        assert!(
            per_fold.iter().all(|&c| (3_700..4_300).contains(&c)),
            "{per_fold:?}"
        );
        assert!(nodes.iter().all(|n| NodeSplit::all().is_train(n)));
    }
}
