//! Sync quorums, with PostgreSQL's `synchronous_standby_names` semantics.
//!
//! - `FIRST k (a, b, c)`: the first `k` *streaming* standbys in list order are `sync`;
//!   a commit waits for all of them. Listed standbys beyond those are `potential` and
//!   replace a sync standby that goes away. With fewer than `k` streaming, commits wait.
//! - `ANY k (a, b, c)`: any `k` streaming listed standbys form a quorum (`quorum` state);
//!   a position is confirmed once `k` of them have reached it.
//! - `*` in the list matches every standby not named elsewhere in it.
//! - Standbys not in the list are `async`: they never hold up a commit.
//!
//! [`QuorumTracker`] turns per-follower progress into the three quorum watermarks that the
//! engine's remote durability levels wait on. It is pure bookkeeping: no I/O, no clock.

use std::collections::BTreeMap;
use std::fmt;

use walship_engine::Lsn;

/// Which standbys a commit waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncPolicy {
    /// The `k` highest-priority streaming standbys of `of` (priority = list order).
    First {
        /// How many must confirm.
        k: usize,
        /// Candidates, highest priority first.
        of: Vec<String>,
    },
    /// Any `k` streaming standbys of `of`.
    Any {
        /// How many must confirm.
        k: usize,
        /// Candidates.
        of: Vec<String>,
    },
}

/// A policy that cannot be satisfied by construction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sync policy {policy}: {reason}")]
pub struct PolicyError {
    policy: String,
    reason: String,
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, k, of) = match self {
            SyncPolicy::First { k, of } => ("FIRST", k, of),
            SyncPolicy::Any { k, of } => ("ANY", k, of),
        };
        write!(f, "{word} {k} ({})", of.join(", "))
    }
}

impl SyncPolicy {
    fn parts(&self) -> (usize, &[String]) {
        match self {
            SyncPolicy::First { k, of } | SyncPolicy::Any { k, of } => (*k, of),
        }
    }

    /// Checks that `k` is between 1 and the number of candidates (unless `*` is listed)
    /// and that no candidate is listed twice.
    ///
    /// # Errors
    /// [`PolicyError`] saying what is wrong.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let (k, of) = self.parts();
        let err = |reason: String| PolicyError {
            policy: self.to_string(),
            reason,
        };
        if k == 0 {
            return Err(err(
                "k must be at least 1 (use async commits to wait for no standby)".into(),
            ));
        }
        let wildcard = of.iter().any(|n| n == "*");
        if !wildcard && k > of.len() {
            return Err(err(format!(
                "k = {k} but only {} standbys are listed",
                of.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in of {
            if !seen.insert(n) {
                return Err(err(format!("standby {n:?} is listed twice")));
            }
        }
        Ok(())
    }

    /// How many standbys must confirm (`k`).
    pub fn required(&self) -> usize {
        self.parts().0
    }

    /// Whether `node` is one of the standbys the policy counts.
    pub fn counts(&self, node: &str) -> bool {
        self.priority(node).is_some()
    }

    /// The position of `node` in the list (its priority, 0 = highest), if listed,
    /// falling back to the position of `*`.
    fn priority(&self, node: &str) -> Option<usize> {
        let (_, of) = self.parts();
        of.iter()
            .position(|n| n == node)
            .or_else(|| of.iter().position(|n| n == "*"))
    }
}

/// `synchronous_standby_names` syntax: `FIRST k (a, b)`, `ANY k (a, b)`, `k (a, b)`
/// (FIRST), or a bare list `a, b` (FIRST 1); `*` matches any standby. Keywords are
/// case-insensitive. The result is [validated](SyncPolicy::validate).
///
/// ```
/// use walship_transport::SyncPolicy;
/// let p: SyncPolicy = "ANY 1 (*)".parse()?;
/// assert_eq!(p, SyncPolicy::Any { k: 1, of: vec!["*".into()] });
/// assert_eq!("first 2 (a, b, c)".parse::<SyncPolicy>()?.to_string(), "FIRST 2 (a, b, c)");
/// assert!("ANY 3 (a, b)".parse::<SyncPolicy>().is_err());
/// # Ok::<(), walship_transport::quorum::PolicyError>(())
/// ```
impl std::str::FromStr for SyncPolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<SyncPolicy, PolicyError> {
        let err = |reason: &str| PolicyError {
            policy: s.to_string(),
            reason: reason.to_string(),
        };
        let text = s.trim();
        let (head, list) = match (text.find('('), text.ends_with(')')) {
            (Some(open), true) => (text[..open].trim(), &text[open + 1..text.len() - 1]),
            (None, _) => ("", text),
            (Some(_), false) => return Err(err("a list opened with `(` must end with `)`")),
        };
        let words: Vec<&str> = head.split_whitespace().collect();
        let k = |w: &str| {
            w.parse::<usize>()
                .map_err(|_| err(&format!("{w:?} is not a number of standbys")))
        };
        let (any, k) = match words.as_slice() {
            [] => (false, 1),
            [n] => (false, k(n)?),
            [kw, n] if kw.eq_ignore_ascii_case("first") => (false, k(n)?),
            [kw, n] if kw.eq_ignore_ascii_case("any") => (true, k(n)?),
            _ => {
                return Err(err(
                    "expected FIRST k (…), ANY k (…), k (…) or a list of names",
                ))
            }
        };
        let of: Vec<String> = list
            .split(',')
            .map(|n| n.trim().trim_matches('"').to_string())
            .collect();
        if of.iter().any(String::is_empty) {
            return Err(err("empty standby name in the list"));
        }
        let policy = if any {
            SyncPolicy::Any { k, of }
        } else {
            SyncPolicy::First { k, of }
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// How far one follower has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Written to its OS.
    pub written: Lsn,
    /// Flushed to its disk.
    pub flushed: Lsn,
    /// Applied by its embedder.
    pub applied: Lsn,
}

/// A follower's role in the quorum, as `pg_stat_replication.sync_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Counted now (FIRST): commits wait for it.
    Sync,
    /// A candidate in an ANY quorum.
    Quorum,
    /// Listed under FIRST but not among the first k streaming: replaces a sync standby.
    Potential,
    /// Not listed, or not streaming: never waited for.
    Async,
}

impl SyncState {
    /// The name `pg_stat_replication` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Sync => "sync",
            SyncState::Quorum => "quorum",
            SyncState::Potential => "potential",
            SyncState::Async => "async",
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    streaming: bool,
    progress: Progress,
}

/// Per-follower progress in, quorum watermarks out.
///
/// ```
/// use walship_engine::Lsn;
/// use walship_transport::quorum::{Progress, QuorumTracker, SyncPolicy, SyncState};
/// let mut q = QuorumTracker::new(SyncPolicy::First { k: 1, of: vec!["a".into(), "b".into()] })?;
/// let at = |n| Progress { written: Lsn::new(n), flushed: Lsn::new(n), applied: Lsn::new(n) };
/// q.update("a", true, at(100));
/// q.update("b", true, at(500));
/// assert_eq!(q.quorum().flushed, Lsn::new(100)); // "a" has priority
/// q.disconnected("a");
/// assert_eq!(q.sync_state("b"), SyncState::Sync); // "b" takes over
/// assert_eq!(q.quorum().flushed, Lsn::new(500));
/// # Ok::<(), walship_transport::quorum::PolicyError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuorumTracker {
    policy: SyncPolicy,
    members: BTreeMap<String, Member>,
}

impl QuorumTracker {
    /// A tracker for `policy`.
    ///
    /// # Errors
    /// [`PolicyError`] if the policy is invalid.
    pub fn new(policy: SyncPolicy) -> Result<QuorumTracker, PolicyError> {
        policy.validate()?;
        Ok(QuorumTracker {
            policy,
            members: BTreeMap::new(),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &SyncPolicy {
        &self.policy
    }

    /// Records `node`'s progress and whether it is streaming (caught up and receiving
    /// live data; PostgreSQL counts only streaming standbys).
    pub fn update(&mut self, node: &str, streaming: bool, progress: Progress) {
        let m = self.members.entry(node.to_string()).or_insert(Member {
            streaming,
            progress,
        });
        m.streaming = streaming;
        m.progress = progress;
    }

    /// Marks `node` as gone; it no longer counts until it streams again.
    pub fn disconnected(&mut self, node: &str) {
        if let Some(m) = self.members.get_mut(node) {
            m.streaming = false;
        }
    }

    /// Forgets `node` entirely.
    pub fn remove(&mut self, node: &str) {
        self.members.remove(node);
    }

    /// The streaming, listed members in priority order (ties by name).
    fn candidates(&self) -> Vec<(&str, &Member)> {
        let mut c: Vec<(usize, &str, &Member)> = self
            .members
            .iter()
            .filter(|(_, m)| m.streaming)
            .filter_map(|(n, m)| self.policy.priority(n).map(|p| (p, n.as_str(), m)))
            .collect();
        c.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        c.into_iter().map(|(_, n, m)| (n, m)).collect()
    }

    /// `node`'s role right now.
    pub fn sync_state(&self, node: &str) -> SyncState {
        let Some(m) = self.members.get(node) else {
            return SyncState::Async;
        };
        if !m.streaming || self.policy.priority(node).is_none() {
            return SyncState::Async;
        }
        match &self.policy {
            SyncPolicy::Any { .. } => SyncState::Quorum,
            SyncPolicy::First { k, .. } => {
                if self.candidates().iter().take(*k).any(|(n, _)| *n == node) {
                    SyncState::Sync
                } else {
                    SyncState::Potential
                }
            }
        }
    }

    /// The positions the sync quorum has confirmed; `Lsn::ZERO` for a level the quorum
    /// cannot confirm (fewer than `k` streaming candidates).
    pub fn quorum(&self) -> Progress {
        let c = self.candidates();
        let k = self.policy.parts().0;
        if c.len() < k {
            return Progress::default();
        }
        let level = |f: fn(&Progress) -> Lsn| -> Lsn {
            match &self.policy {
                SyncPolicy::First { .. } => c
                    .iter()
                    .take(k)
                    .map(|(_, m)| f(&m.progress))
                    .min()
                    .unwrap_or(Lsn::ZERO),
                SyncPolicy::Any { .. } => {
                    let mut v: Vec<Lsn> = c.iter().map(|(_, m)| f(&m.progress)).collect();
                    v.sort_unstable_by(|a, b| b.cmp(a));
                    v.get(k - 1).copied().unwrap_or(Lsn::ZERO)
                }
            }
        };
        Progress {
            written: level(|p| p.written),
            flushed: level(|p| p.flushed),
            applied: level(|p| p.applied),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn policies_parse_from_their_display_and_postgres_forms() {
        for text in ["FIRST 2 (a, b, c)", "ANY 1 (*)", "ANY 2 (x, *)"] {
            let p: SyncPolicy = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        assert_eq!(
            "a, b".parse::<SyncPolicy>().unwrap(),
            SyncPolicy::First {
                k: 1,
                of: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            "2 (a, b)".parse::<SyncPolicy>().unwrap().to_string(),
            "FIRST 2 (a, b)"
        );
        for bad in [
            "ANY (a)",
            "SOME 1 (a)",
            "ANY 1 (a, )",
            "ANY 1 (a",
            "ANY 0 (*)",
        ] {
            assert!(bad.parse::<SyncPolicy>().is_err(), "{bad}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn at(w: u64, f: u64, a: u64) -> Progress {
        Progress {
            written: Lsn::new(w),
            flushed: Lsn::new(f),
            applied: Lsn::new(a),
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn validation() {
        assert!(SyncPolicy::First {
            k: 0,
            of: names(&["a"])
        }
        .validate()
        .is_err());
        assert!(SyncPolicy::Any {
            k: 3,
            of: names(&["a", "b"])
        }
        .validate()
        .is_err());
        assert!(SyncPolicy::Any {
            k: 3,
            of: names(&["a", "*"])
        }
        .validate()
        .is_ok());
        assert!(SyncPolicy::First {
            k: 1,
            of: names(&["a", "a"])
        }
        .validate()
        .is_err());
        assert_eq!(
            SyncPolicy::Any {
                k: 2,
                of: names(&["a", "b", "c"])
            }
            .to_string(),
            "ANY 2 (a, b, c)"
        );
    }

    #[test]
    fn first_k_waits_for_the_highest_priority_streaming_standbys() {
        let mut q = QuorumTracker::new(SyncPolicy::First {
            k: 2,
            of: names(&["a", "b", "c"]),
        })
        .unwrap();
        q.update("c", true, at(900, 900, 900));
        q.update("x", true, at(999, 999, 999));
        assert_eq!(
            q.quorum(),
            Progress::default(),
            "one listed standby streaming, k = 2"
        );
        assert_eq!(q.sync_state("x"), SyncState::Async);
        q.update("b", true, at(300, 200, 100));
        assert_eq!(q.quorum(), at(300, 200, 100), "min over b and c");
        assert_eq!(
            (q.sync_state("b"), q.sync_state("c")),
            (SyncState::Sync, SyncState::Sync)
        );
        q.update("a", true, at(50, 50, 50));
        assert_eq!(q.sync_state("c"), SyncState::Potential, "a outranks c");
        assert_eq!(q.quorum(), at(50, 50, 50));
        q.disconnected("a");
        assert_eq!(q.sync_state("c"), SyncState::Sync, "c replaces the lost a");
        assert_eq!(q.sync_state("a"), SyncState::Async);
        assert_eq!(q.quorum(), at(300, 200, 100));
    }

    #[test]
    fn any_k_takes_the_kth_highest_per_level() {
        let mut q = QuorumTracker::new(SyncPolicy::Any {
            k: 1,
            of: names(&["a", "b"]),
        })
        .unwrap();
        q.update("a", true, at(100, 90, 80));
        q.update("b", false, at(500, 500, 500));
        assert_eq!(q.quorum(), at(100, 90, 80), "only streaming standbys count");
        q.update("b", true, at(500, 60, 500));
        assert_eq!(q.quorum(), at(500, 90, 500));
        assert_eq!(q.sync_state("a"), SyncState::Quorum);
        q.disconnected("a");
        assert_eq!(
            q.quorum(),
            at(500, 60, 500),
            "ANY 1 of two keeps confirming with one down"
        );
        let mut q = QuorumTracker::new(SyncPolicy::Any {
            k: 2,
            of: names(&["*"]),
        })
        .unwrap();
        q.update("p", true, at(10, 10, 10));
        q.update("q", true, at(30, 30, 30));
        q.update("r", true, at(20, 20, 20));
        assert_eq!(q.quorum(), at(20, 20, 20));
    }

    proptest! {
        /// A position is confirmed exactly when at least k streaming candidates reached it
        /// (ANY), or all of the first k did (FIRST).
        #[test]
        fn quorum_matches_its_definition(
            k in 1usize..4,
            members in prop::collection::vec((0usize..5, any::<bool>(), 0u64..100), 0..8),
            probe in 0u64..100,
        ) {
            let of = names(&["n0", "n1", "n2", "n3", "n4"]);
            let mut any = QuorumTracker::new(SyncPolicy::Any { k, of: of.clone() }).unwrap();
            let mut first = QuorumTracker::new(SyncPolicy::First { k, of: of.clone() }).unwrap();
            let mut state: BTreeMap<usize, (bool, u64)> = BTreeMap::new();
            for (i, s, l) in members {
                any.update(&of[i], s, at(l, l, l));
                first.update(&of[i], s, at(l, l, l));
                state.insert(i, (s, l));
            }
            let streaming: Vec<(usize, u64)> = state.iter().filter(|(_, (s, _))| *s).map(|(i, (_, l))| (*i, *l)).collect();
            let reached = streaming.iter().filter(|(_, l)| *l >= probe).count();
            let any_ok = probe > 0 && any.quorum().flushed >= Lsn::new(probe);
            prop_assert_eq!(any_ok, probe > 0 && reached >= k);
            let first_k: Vec<_> = streaming.iter().take(k).collect();
            let first_ok = probe > 0 && first.quorum().flushed >= Lsn::new(probe);
            prop_assert_eq!(first_ok, probe > 0 && first_k.len() == k && first_k.iter().all(|(_, l)| *l >= probe));
        }
    }
}
