//! Partitions of a data-plane run: which processes a shape cuts off from which, turned into
//! port pairs ([`crate::nemesis::ports`]) when the partition is applied. The firewall's set
//! is always the union of the partitions in effect, since both fault streams may have one.

use std::collections::BTreeSet;

use super::{lock, DataNemesis, Undo};
use crate::data::cluster::Proc;
use crate::data::schedule::{PartitionShape, Side};
use crate::nemesis::ports::PortPartition;
use crate::nemesis::NemesisError;

impl DataNemesis {
    /// Ports of each process in `procs` that runs; the names of those that do not.
    fn ports_of(&self, procs: &[Proc]) -> (BTreeSet<u16>, Vec<String>) {
        let mut ports = BTreeSet::new();
        let mut missing = Vec::new();
        for p in procs {
            match self.cluster.ports(*p) {
                Ok(set) => ports.extend(set),
                Err(_) => missing.push(p.name()),
            }
        }
        (ports, missing)
    }

    /// Applies the union of the partitions in effect (a flush when there is none).
    pub(super) fn apply_partitions(&self) -> Result<(), NemesisError> {
        let fw = self
            .firewall
            .as_ref()
            .map_err(|reason| NemesisError::Unavailable {
                nemesis: "partition",
                reason: reason.clone(),
            })?;
        let all = lock(&self.partitions);
        let mut union = PortPartition::default();
        for (_, p) in all.values() {
            union.merge(p);
        }
        if union.blocked.is_empty() {
            fw.heal()
        } else {
            fw.apply(&union)
        }
    }

    /// Cuts off the process `shape` names (chosen with `pick`) as fault number `index`.
    pub(super) async fn partition(
        &self,
        index: usize,
        side: Side,
        shape: PartitionShape,
        pick: u64,
    ) -> Result<(String, Undo), NemesisError> {
        if let Err(reason) = &self.firewall {
            return Err(NemesisError::Unavailable {
                nemesis: "partition",
                reason: reason.clone(),
            });
        }
        let counts = self.cluster.shape;
        let members: Vec<Proc> = (1..=counts.meta).map(Proc::Meta).collect();
        let storage: Vec<Proc> = (1..=counts.storage).map(Proc::Storage).collect();
        let leader = self.leader().await;
        let (victim, why) = match (side, shape) {
            (Side::Storage, _) => {
                let (id, why) = self.storage_target(pick).await;
                (Proc::Storage(id), why)
            }
            (Side::Meta, PartitionShape::LeaderIsolated) => {
                let id = leader.ok_or_else(|| {
                    NemesisError::Control("no metadata leader known to isolate".into())
                })?;
                (Proc::Meta(id), "the leader".to_string())
            }
            (Side::Meta, _) => (
                Proc::Meta(1 + pick % counts.meta.max(1)),
                "chosen at random".to_string(),
            ),
            (Side::Migrate, _) => {
                return Err(NemesisError::Invalid(
                    "a partition is not the migrate stream's".into(),
                ))
            }
        };
        let peers = storage.iter().copied().filter(|p| *p != victim);
        let others: Vec<Proc> = match (side, shape) {
            // A member: cut off from everyone.
            (Side::Meta, _) => members
                .iter()
                .copied()
                .filter(|p| *p != victim)
                .chain(peers)
                .collect(),
            (Side::Storage, PartitionShape::PrimaryFromMeta) => members.clone(),
            (Side::Storage, PartitionShape::PrimaryFromSecondaries) => peers.collect(),
            // From its secondaries and the metadata leader.
            _ => peers.chain(leader.map(Proc::Meta)).collect(),
        };
        let mine = self.cluster.ports(victim)?;
        let (theirs, missing) = self.ports_of(&others);
        let p = PortPartition::split(&mine, &theirs);
        let names: Vec<String> = others
            .iter()
            .map(|o| match (o, leader) {
                (Proc::Meta(m), Some(l)) if *m == l => format!("{} (leader)", o.name()),
                _ => o.name(),
            })
            .collect();
        let mut description = format!(
            "partition: {} ({why}) cut off from {}",
            victim.name(),
            names.join(", ")
        );
        if side == Side::Storage && shape == PartitionShape::PrimaryIsolated && leader.is_none() {
            description.push_str(" (no metadata leader known)");
        }
        if !missing.is_empty() {
            description.push_str(&format!(" ({} not running)", missing.join(", ")));
        }
        lock(&self.partitions).insert(index, (victim, p));
        if let Err(e) = self.apply_partitions() {
            lock(&self.partitions).remove(&index);
            return Err(e);
        }
        Ok((description, Undo::Unpartition(index)))
    }
}
