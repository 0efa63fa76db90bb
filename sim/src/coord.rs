//! A simulated coordinator with the etcd coordinator's rules (`transport/src/coordinator.rs`):
//! members publish themselves under a lease with a TTL; the leader key lives under the
//! leader's lease; the epoch key only grows; a campaign is one compare-and-swap that
//! succeeds only when no leader key exists and the candidate is the best-placed live
//! member (`walship_transport::coordinator::best_placed`, the same function etcd's
//! campaign uses). Virtual time, in milliseconds.

use std::collections::BTreeMap;

use walship_engine::Epoch;
use walship_transport::coordinator::{best_placed, LeaderInfo, MemberInfo};

/// How long a lease lives without renewal, ms.
pub const LEASE_TTL_MS: u64 = 300;

/// The coordinator's state.
#[derive(Debug, Default)]
pub struct Coordinator {
    /// The last epoch granted.
    epoch: Epoch,
    leader: Option<(LeaderInfo, u64)>,
    members: BTreeMap<String, (MemberInfo, u64)>,
    /// Elections won, for reports.
    pub elections: u64,
}

impl Coordinator {
    fn expire(&mut self, now: u64) {
        if self.leader.as_ref().is_some_and(|(_, until)| *until <= now) {
            self.leader = None;
        }
        self.members.retain(|_, (_, until)| *until > now);
    }

    /// A member publishes (or renews) its entry.
    pub fn publish(&mut self, now: u64, me: MemberInfo) {
        self.expire(now);
        self.members
            .insert(me.node_id.clone(), (me, now + LEASE_TTL_MS));
    }

    /// The leader key, if any; the leader renewing it keeps its lease alive.
    pub fn leader(&mut self, now: u64, asker: &str) -> Option<LeaderInfo> {
        self.expire(now);
        if let Some((l, until)) = self.leader.as_mut() {
            if l.node_id == asker {
                *until = now + LEASE_TTL_MS;
            }
        }
        self.leader.as_ref().map(|(l, _)| l.clone())
    }

    /// The live members.
    pub fn members(&mut self, now: u64) -> Vec<MemberInfo> {
        self.expire(now);
        self.members.values().map(|(m, _)| m.clone()).collect()
    }

    /// One campaign: the epoch won, or `None` if someone leads or is better placed.
    pub fn campaign(&mut self, now: u64, me: &MemberInfo, addr: &str) -> Option<Epoch> {
        self.expire(now);
        if self.leader.is_some() {
            return None;
        }
        let members = self.members(now);
        if !best_placed(me, &members) {
            return None;
        }
        self.grant(now, me, addr)
    }

    /// The leader key, if any, without renewing anything (an operator looking).
    pub fn peek_leader(&mut self, now: u64) -> Option<LeaderInfo> {
        self.expire(now);
        self.leader.as_ref().map(|(l, _)| l.clone())
    }

    /// An operator's promotion (`Coordinator::takeover`): `me` leads now, whoever holds
    /// the leader key, in an epoch above every epoch granted or seen.
    pub fn takeover(&mut self, now: u64, me: &MemberInfo, addr: &str) -> Option<Epoch> {
        self.grant(now, me, addr)
    }

    /// Grants `me` the next epoch (above every epoch granted or seen) and the leader key.
    fn grant(&mut self, now: u64, me: &MemberInfo, addr: &str) -> Option<Epoch> {
        let next = Epoch::new(self.epoch.get().max(me.epoch.get()).checked_add(1)?);
        self.epoch = next;
        self.leader = Some((
            LeaderInfo {
                node_id: me.node_id.clone(),
                addr: addr.to_string(),
                epoch: next,
            },
            now + LEASE_TTL_MS,
        ));
        self.elections += 1;
        Some(next)
    }

    /// Gives up leadership if `node` holds it.
    pub fn resign(&mut self, node: &str) {
        if self.leader.as_ref().is_some_and(|(l, _)| l.node_id == node) {
            self.leader = None;
        }
    }

    /// Whether `epoch` was ever granted (the epoch authority's check).
    pub fn granted(&self, epoch: Epoch) -> bool {
        epoch <= self.epoch
    }
}
