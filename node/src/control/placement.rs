//! Where replicas go: weighted rendezvous hashing with a bounded-load cap and rack spread.
//!
//! Every (shard, node) pair gets a score `-w / ln(u)`, where `u` in (0, 1) is a hash of the
//! pair and `w` the node's weight (its capacity); a shard's replicas go to the highest scores
//! (Schindelhauer and Schomaker's weighted rendezvous hashing: a node is chosen in proportion
//! to its weight, and adding or removing a node changes only the choices it wins or held).
//! Two rules then bend the pure ranking, in this order: replicas of a shard go to different
//! racks while there are racks left, and no node takes more than a bounded-load cap of
//! replicas (`ceil(factor × mean)`), so an unlucky hash cannot pile shards on one node.
//!
//! Pure functions over records; the control plane decides who is eligible.

use augur_proto::{NodeId, ShardId};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A node that may receive replicas, with what placement needs to know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The node.
    pub id: NodeId,
    /// Its weight: its capacity in bytes (any positive scale works).
    pub weight: f64,
    /// Its rack (empty: a rack of its own).
    pub rack: String,
}

/// The default bounded-load factor: no node above 1.25 × the mean replica count.
pub const LOAD_FACTOR: f64 = 1.25;

/// A 64-bit mix of (shard, node) (splitmix64 over both ids): stable across builds, unlike
/// std's hasher.
fn pair_hash(shard: ShardId, node: NodeId) -> u64 {
    let mut x = shard
        .0
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(node.0.rotate_left(17));
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The rendezvous score of `node` for `shard`: higher wins.
pub fn score(shard: ShardId, node: &Candidate) -> f64 {
    // u in (0, 1): never 0 (ln would be -inf) nor 1 (ln would be 0).
    let u = ((pair_hash(shard, node.id) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -node.weight.max(f64::MIN_POSITIVE) / u.ln()
}

/// The candidates ranked for `shard`, best first.
pub fn ranking(shard: ShardId, nodes: &[Candidate]) -> Vec<&Candidate> {
    let mut ranked: Vec<&Candidate> = nodes.iter().collect();
    ranked.sort_by(|a, b| {
        score(shard, b)
            .total_cmp(&score(shard, a))
            .then(a.id.cmp(&b.id))
    });
    ranked
}

/// Why a placement could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Fewer eligible nodes than replicas wanted.
    #[error("{rf} replicas per shard need {rf} eligible nodes; {available} are")]
    NotEnoughNodes {
        /// Replicas wanted.
        rf: usize,
        /// Eligible nodes.
        available: usize,
    },
}

/// Picks `want` more nodes for `shard`, in preference order, that are not in `exclude`: by
/// rank, preferring racks not yet used by `exclude`'s members, skipping nodes at `cap`
/// (counted in `load`). Nodes at the cap are used only if nothing else is left, so a shard is
/// never left short when a node could take it.
pub fn pick(
    shard: ShardId,
    nodes: &[Candidate],
    exclude: &[NodeId],
    want: usize,
    load: &HashMap<NodeId, usize>,
    cap: usize,
) -> Vec<NodeId> {
    let racks: HashMap<NodeId, &str> = nodes.iter().map(|n| (n.id, n.rack.as_str())).collect();
    let used: Vec<&str> = exclude
        .iter()
        .filter_map(|id| racks.get(id).copied())
        .collect();
    pick_beside(shard, nodes, exclude, &used, want, load, cap)
}

/// [`pick`] for a shard whose members sit in `used_racks`: the racks to avoid are given,
/// not looked up among the candidates, because a member's node need not be one (a Suspect,
/// cordoned or full node holds replicas too, and its rack is as used as any).
pub fn pick_beside(
    shard: ShardId,
    nodes: &[Candidate],
    exclude: &[NodeId],
    used_racks: &[&str],
    want: usize,
    load: &HashMap<NodeId, usize>,
    cap: usize,
) -> Vec<NodeId> {
    let mut used_racks: HashSet<String> = used_racks
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| r.to_string())
        .collect();
    let ranked: Vec<&Candidate> = ranking(shard, nodes)
        .into_iter()
        .filter(|c| !exclude.contains(&c.id))
        .collect();
    let mut chosen: Vec<NodeId> = Vec::with_capacity(want);
    // Passes from strictest to loosest: new rack and under the cap; under the cap; anything.
    for pass in 0..3 {
        for c in &ranked {
            if chosen.len() == want {
                return chosen;
            }
            if chosen.contains(&c.id) {
                continue;
            }
            let under_cap = load.get(&c.id).copied().unwrap_or(0) < cap;
            let new_rack = c.rack.is_empty() || !used_racks.contains(&c.rack);
            let ok = match pass {
                0 => under_cap && new_rack,
                1 => under_cap,
                _ => true,
            };
            if ok {
                chosen.push(c.id);
                if !c.rack.is_empty() {
                    used_racks.insert(c.rack.clone());
                }
            }
        }
    }
    chosen
}

/// The cap on replicas per node for `shards × rf` replicas over `nodes` nodes.
pub fn load_cap(shards: usize, rf: usize, nodes: usize, factor: f64) -> usize {
    if nodes == 0 {
        return 0;
    }
    let mean = (shards * rf) as f64 / nodes as f64;
    ((mean * factor).ceil() as usize).max(1)
}

/// Initial placement of shards `1..=shards` with `rf` replicas each (primary first).
pub fn initial(
    shards: u32,
    rf: usize,
    nodes: &[Candidate],
) -> Result<BTreeMap<ShardId, Vec<NodeId>>, PlacementError> {
    if nodes.len() < rf {
        return Err(PlacementError::NotEnoughNodes {
            rf,
            available: nodes.len(),
        });
    }
    let cap = load_cap(shards as usize, rf, nodes.len(), LOAD_FACTOR);
    let mut load: HashMap<NodeId, usize> = HashMap::new();
    let mut primaries: HashMap<NodeId, usize> = HashMap::new();
    let pcap = load_cap(shards as usize, 1, nodes.len(), LOAD_FACTOR);
    let mut out = BTreeMap::new();
    for s in 1..=u64::from(shards) {
        let shard = ShardId(s);
        let mut replicas = pick(shard, nodes, &[], rf, &load, cap);
        // Spread primaries too: the replica leading the fewest shards so far leads this one
        // (the best-ranked among equals), never one at the primary cap if another is not.
        if let Some(i) = (0..replicas.len()).min_by_key(|i| {
            let led = primaries.get(&replicas[*i]).copied().unwrap_or(0);
            (led >= pcap, led, *i)
        }) {
            replicas.swap(0, i);
        }
        for n in &replicas {
            *load.entry(*n).or_default() += 1;
        }
        if let Some(p) = replicas.first() {
            *primaries.entry(*p).or_default() += 1;
        }
        out.insert(shard, replicas);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64, racks: u64) -> Vec<Candidate> {
        (1..=n)
            .map(|i| Candidate {
                id: NodeId(i),
                weight: 1e12,
                rack: format!("r{}", i % racks),
            })
            .collect()
    }

    #[test]
    fn initial_placement_spreads_replicas_racks_and_primaries() {
        let ns = nodes(5, 5);
        let p = initial(64, 3, &ns).unwrap();
        assert_eq!(p.len(), 64);
        let mut load: HashMap<NodeId, usize> = HashMap::new();
        let mut prim: HashMap<NodeId, usize> = HashMap::new();
        for reps in p.values() {
            assert_eq!(reps.len(), 3);
            let mut d = reps.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "a node twice in {reps:?}");
            for n in reps {
                *load.entry(*n).or_default() += 1;
            }
            *prim.entry(reps[0]).or_default() += 1;
        }
        let cap = load_cap(64, 3, 5, LOAD_FACTOR);
        assert!(load.values().all(|l| *l <= cap), "{load:?} cap {cap}");
        // 64 primaries over 5 nodes: 12 or 13 each.
        assert_eq!(prim.len(), 5, "{prim:?}");
        assert!(prim.values().all(|l| (12..=13).contains(l)), "{prim:?}");
    }

    #[test]
    fn replicas_use_distinct_racks_while_there_are_enough() {
        // Six nodes in three racks: every shard's three replicas in three racks.
        let ns = nodes(6, 3);
        let racks: HashMap<NodeId, String> = ns.iter().map(|c| (c.id, c.rack.clone())).collect();
        for reps in initial(100, 3, &ns).unwrap().values() {
            let mut rs: Vec<&String> = reps.iter().map(|n| &racks[n]).collect();
            rs.sort();
            rs.dedup();
            assert_eq!(rs.len(), 3, "{reps:?}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_replicas() {
        let ns = nodes(8, 8);
        let load = HashMap::new();
        let before: Vec<Vec<NodeId>> = (1..=200)
            .map(|s| pick(ShardId(s), &ns, &[], 3, &load, usize::MAX))
            .collect();
        let without: Vec<Candidate> = ns.iter().filter(|c| c.id != NodeId(4)).cloned().collect();
        for (i, old) in before.iter().enumerate() {
            let new = pick(ShardId(i as u64 + 1), &without, &[], 3, &load, usize::MAX);
            let kept: Vec<&NodeId> = old.iter().filter(|n| **n != NodeId(4)).collect();
            for n in kept {
                assert!(new.contains(n), "shard {} lost {n} for no reason", i + 1);
            }
        }
    }

    #[test]
    fn weight_draws_shards_in_proportion() {
        let mut ns = nodes(4, 4);
        ns[0].weight *= 3.0;
        let load = HashMap::new();
        let mut first = HashMap::<NodeId, usize>::new();
        for s in 1..=6000 {
            let top = pick(ShardId(s), &ns, &[], 1, &load, usize::MAX)[0];
            *first.entry(top).or_default() += 1;
        }
        // Weights 3:1:1:1 -> about half of the first choices.
        let heavy = first[&NodeId(1)] as f64 / 6000.0;
        assert!((0.44..0.56).contains(&heavy), "{heavy}");
    }

    #[test]
    fn too_few_nodes_is_an_error_and_excluded_nodes_are_skipped() {
        assert!(matches!(
            initial(4, 3, &nodes(2, 2)),
            Err(PlacementError::NotEnoughNodes {
                rf: 3,
                available: 2
            })
        ));
        let ns = nodes(5, 5);
        let got = pick(
            ShardId(9),
            &ns,
            &[NodeId(1), NodeId(2)],
            2,
            &HashMap::new(),
            10,
        );
        assert_eq!(got.len(), 2);
        assert!(!got.contains(&NodeId(1)) && !got.contains(&NodeId(2)));
    }

    /// The racks of a shard's members count even when their nodes are not candidates (a
    /// Suspect or full node still holds its replica): a new replica goes to a third rack
    /// while one is free, whichever node ranks first.
    #[test]
    fn racks_of_members_that_are_not_candidates_are_avoided() {
        let rack = |id: u64, r: &str| Candidate {
            id: NodeId(id),
            weight: 1.0,
            rack: r.into(),
        };
        // Members 1 (r1) and 3 (r2); node 3 is no candidate. Candidates 4 (r2) and 6 (r3).
        let candidates = [rack(4, "r2"), rack(6, "r3")];
        let members = [NodeId(1), NodeId(3)];
        for s in 1..=50 {
            let got = pick_beside(
                ShardId(s),
                &candidates,
                &members,
                &["r1", "r2"],
                1,
                &HashMap::new(),
                usize::MAX,
            );
            assert_eq!(got, vec![NodeId(6)], "shard {s}");
        }
    }
}
