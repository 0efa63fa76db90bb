//! A node's role decisions, without I/O ([`RoleDecider`]): given what the node is doing,
//! what the coordinator says and `now`, what to do next. The node loop (`node.rs`) asks
//! the coordinator, feeds the answers in, and carries the decisions out; the rules live
//! here, where a test (or a simulator) can drive them with any answers and any clock.
//!
//! | doing | coordinator names | decision |
//! | --- | --- | --- |
//! | leading, fenced | anything | step down |
//! | leading | this node | stay |
//! | leading | another node, or none | step down |
//! | not leading | this node, in an epoch above what it has seen | lead that epoch |
//! | not leading | this node, in an old epoch (a claim from before a restart) | campaign; if refused, resign the claim |
//! | following L | L at the same address | stay |
//! | anything else | M | follow M |
//! | not leading | none, for less than `settle`, or while held off after stepping down | stay |
//! | not leading | none, for `settle` | count the live members; campaign if `election_quorum` are visible |

use std::time::{Duration, Instant};

use walship_engine::Epoch;

use crate::coordinator::{LeaderInfo, MemberInfo};

/// What the node is doing when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doing {
    /// Leading; `Some` if it was fenced (it stepped down already, by itself).
    Leading(Option<String>),
    /// Following this leader.
    Following(LeaderInfo),
    /// Neither.
    Idle,
}

/// What the node loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing.
    Stay,
    /// Stop leading: fence, shut the leader down, seal the log.
    StepDown(String),
    /// Follow this leader (re-point if following another).
    Follow(LeaderInfo),
    /// Lead this epoch, granted by the coordinator.
    Lead(Epoch),
    /// Campaign: ask the coordinator to elect this node; lead the epoch it grants.
    Campaign,
    /// Campaign for a claim from before a restart; if the coordinator refuses, resign it.
    RenewClaim,
    /// List the live members and report how many there are ([`RoleDecider::members`]).
    CountMembers,
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RoleDecider {
    settle: Duration,
    election_quorum: usize,
    /// Since when no leader has been named.
    absent_since: Option<Instant>,
    /// No campaigning before this (after stepping down).
    hold_off_until: Option<Instant>,
}

impl RoleDecider {
    /// Campaigns only after no leader was named for `settle`, and only with
    /// `election_quorum` live members visible.
    pub fn new(settle: Duration, election_quorum: usize) -> RoleDecider {
        RoleDecider {
            settle,
            election_quorum,
            absent_since: None,
            hold_off_until: None,
        }
    }

    /// The decision at `now` for a node (`me`) `doing` this while the coordinator names
    /// `named`.
    pub fn decide(
        &mut self,
        now: Instant,
        doing: &Doing,
        me: &MemberInfo,
        named: Option<&LeaderInfo>,
    ) -> Decision {
        if named.is_some() {
            self.absent_since = None;
        }
        match (doing, named) {
            (Doing::Leading(Some(why)), _) => Decision::StepDown(why.clone()),
            (Doing::Leading(None), Some(l)) if l.node_id == me.node_id => Decision::Stay,
            (Doing::Leading(None), Some(l)) => Decision::StepDown(format!(
                "the coordinator names {} the leader in epoch {}",
                l.node_id, l.epoch
            )),
            (Doing::Leading(None), None) => {
                Decision::StepDown("the coordinator no longer names this node the leader".into())
            }
            // Named but not leading: an operator's static configuration, or a grant whose
            // start failed. A new epoch is led as granted; an old one (a claim from before
            // a restart) is renewed by campaigning, or else released.
            (_, Some(l)) if l.node_id == me.node_id && l.epoch > me.epoch => {
                Decision::Lead(l.epoch)
            }
            (_, Some(l)) if l.node_id == me.node_id => Decision::RenewClaim,
            (Doing::Following(cur), Some(l)) if cur.node_id == l.node_id && cur.addr == l.addr => {
                Decision::Stay
            }
            (_, Some(l)) => Decision::Follow(l.clone()),
            (_, None) => {
                let since = *self.absent_since.get_or_insert(now);
                let held = self.hold_off_until.is_some_and(|t| now < t);
                if now.saturating_duration_since(since) < self.settle || held {
                    Decision::Stay
                } else {
                    Decision::CountMembers
                }
            }
        }
    }

    /// `n` live members are visible: campaign if that is enough for an election, else
    /// say why not.
    pub fn members(&self, n: usize) -> Result<Decision, String> {
        if n >= self.election_quorum {
            Ok(Decision::Campaign)
        } else {
            Err(format!(
                "no leader, and only {n} of the {} members an election needs are live",
                self.election_quorum
            ))
        }
    }

    /// The node stepped down on request at `now`: it stays out of elections for a while
    /// (four times `settle`), so another member takes over.
    pub fn stepped_down(&mut self, now: Instant) {
        self.hold_off_until = Some(now + self.settle * 4);
    }

    /// The node leads: any hold-off is over.
    pub fn leads(&mut self) {
        self.hold_off_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(epoch: u64) -> MemberInfo {
        MemberInfo {
            node_id: "n1".into(),
            addr: "a1".into(),
            epoch: Epoch::new(epoch),
            log_epoch: Epoch::new(epoch),
            flushed: walship_engine::Lsn::new(100),
        }
    }

    fn leader(node: &str, epoch: u64) -> LeaderInfo {
        LeaderInfo {
            node_id: node.into(),
            addr: format!("addr-{node}"),
            epoch: Epoch::new(epoch),
        }
    }

    #[test]
    fn the_decision_table() {
        let t = Instant::now();
        let mut d = RoleDecider::new(Duration::from_millis(500), 2);
        let m = me(3);
        let cases = [
            (
                Doing::Leading(Some("newer epoch".into())),
                Some(leader("n1", 3)),
                Decision::StepDown("newer epoch".into()),
            ),
            (Doing::Leading(None), Some(leader("n1", 3)), Decision::Stay),
            (
                Doing::Leading(None),
                Some(leader("n2", 4)),
                Decision::StepDown("the coordinator names n2 the leader in epoch 4".into()),
            ),
            (
                Doing::Idle,
                Some(leader("n1", 4)),
                Decision::Lead(Epoch::new(4)),
            ),
            (Doing::Idle, Some(leader("n1", 3)), Decision::RenewClaim),
            (
                Doing::Following(leader("n2", 4)),
                Some(leader("n2", 4)),
                Decision::Stay,
            ),
            (
                Doing::Following(leader("n2", 4)),
                Some(leader("n3", 5)),
                Decision::Follow(leader("n3", 5)),
            ),
            (
                Doing::Idle,
                Some(leader("n2", 4)),
                Decision::Follow(leader("n2", 4)),
            ),
        ];
        for (doing, named, want) in cases {
            assert_eq!(
                d.decide(t, &doing, &m, named.as_ref()),
                want,
                "{doing:?} {named:?}"
            );
        }
        assert!(matches!(
            d.decide(t, &Doing::Leading(None), &m, None),
            Decision::StepDown(_)
        ));
    }

    #[test]
    fn no_campaign_before_settle_nor_while_held_off_nor_without_a_quorum() {
        let t = Instant::now();
        let settle = Duration::from_millis(500);
        let mut d = RoleDecider::new(settle, 2);
        let m = me(3);
        assert_eq!(d.decide(t, &Doing::Idle, &m, None), Decision::Stay);
        assert_eq!(
            d.decide(t + settle / 2, &Doing::Idle, &m, None),
            Decision::Stay
        );
        assert_eq!(
            d.decide(t + settle, &Doing::Idle, &m, None),
            Decision::CountMembers
        );
        assert_eq!(d.members(2), Ok(Decision::Campaign));
        assert!(d
            .members(1)
            .unwrap_err()
            .contains("only 1 of the 2 members"));
        // A named leader resets the wait.
        let _ = d.decide(t + settle, &Doing::Idle, &m, Some(&leader("n2", 4)));
        assert_eq!(
            d.decide(t + settle * 2, &Doing::Idle, &m, None),
            Decision::Stay
        );
        // After a requested step-down, no campaign for four settles.
        d.stepped_down(t + settle * 3);
        assert_eq!(
            d.decide(t + settle * 6, &Doing::Idle, &m, None),
            Decision::Stay
        );
        assert_eq!(
            d.decide(t + settle * 7, &Doing::Idle, &m, None),
            Decision::CountMembers
        );
        d.stepped_down(t + settle * 7);
        d.leads();
        assert_eq!(
            d.decide(t + settle * 8, &Doing::Idle, &m, None),
            Decision::CountMembers
        );
    }
}
