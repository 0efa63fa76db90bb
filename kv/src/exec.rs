//! Runs key-space commands: reads answer from the state; writes decide their effects
//! ([`Op`]s) against the state as it is, without changing it.
//!
//! A [`Tx`] is the state seen through the effects decided so far, so the commands of a
//! `MULTI` block see each other's writes, and nothing touches the [`Store`] until the
//! block's one record is in the log: if the append fails (the node is no longer the
//! leader), the state is as if nothing ran. Sans-I/O: the caller passes `now`.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::command::{Cond, Data, ExpireCond, SetExpiry};
use crate::glob;
use crate::hlc::Timestamp;
use crate::record::Op;
use crate::resp::Reply;
use crate::store::{effect, Entry, Store};

/// The state as a transaction sees it: the store, with the transaction's effects over it.
#[derive(Debug)]
pub struct Tx<'a> {
    store: &'a Store,
    now_ms: u64,
    changed: HashMap<Bytes, Option<Entry>>,
    ops: Vec<Op>,
}

impl<'a> Tx<'a> {
    /// A transaction over `store` at wall-clock `now_ms`.
    pub fn new(store: &'a Store, now_ms: u64) -> Tx<'a> {
        Tx {
            store,
            now_ms,
            changed: HashMap::new(),
            ops: Vec::new(),
        }
    }

    /// The effects decided, in order.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// Whether any effect was decided.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The live entry of `key` as the transaction sees it.
    fn get(&self, key: &Bytes) -> Option<&Entry> {
        match self.changed.get(key) {
            Some(e) => e.as_ref(),
            None => self.store.entry(key),
        }
        .filter(|e| !e.expired(self.now_ms))
    }

    fn push(&mut self, op: Op) {
        let prev = self.get(op.key()).cloned();
        // The timestamp is the record's, given when it is logged: the overlay's entries
        // are only read for values and expiry.
        let next = effect(prev.as_ref(), &op, Timestamp::default());
        self.changed.insert(op.key().clone(), next);
        self.ops.push(op);
    }

    /// Runs one command: its reply; its effects are recorded in the transaction.
    pub fn run(&mut self, cmd: &Data) -> Reply {
        let now = self.now_ms;
        match cmd {
            Data::Get(k) => bulk(self.get(k)),
            Data::Mget(keys) => Reply::Array(keys.iter().map(|k| bulk(self.get(k))).collect()),
            Data::Exists(keys) => {
                Reply::Int(keys.iter().filter(|k| self.get(k).is_some()).count() as i64)
            }
            Data::Strlen(k) => Reply::Int(self.get(k).map_or(0, |e| e.value.len() as i64)),
            Data::Ttl { key, millis } => Reply::Int(match self.get(key) {
                None => -2,
                Some(Entry {
                    expire_at: None, ..
                }) => -1,
                Some(Entry {
                    expire_at: Some(at),
                    ..
                }) => {
                    let left = at.saturating_sub(now);
                    if *millis {
                        left as i64
                    } else {
                        // Redis rounds to the nearest second.
                        ((left + 500) / 1000) as i64
                    }
                }
            }),
            Data::Type(k) => Reply::Status(
                if self.get(k).is_some() {
                    "string"
                } else {
                    "none"
                }
                .into(),
            ),
            Data::Dbsize => Reply::Int(self.store.len() as i64),
            Data::Keys(pattern) => Reply::Array(
                self.store
                    .keys(now, |k| glob::matches(pattern, k))
                    .into_iter()
                    .map(Reply::Bulk)
                    .collect(),
            ),
            Data::Scan {
                cursor,
                pattern,
                count,
                kind,
            } => {
                let strings = kind
                    .as_ref()
                    .is_none_or(|t| t.eq_ignore_ascii_case(b"string"));
                let page = self.store.scan(*cursor, *count, now, |k| {
                    strings && pattern.as_ref().is_none_or(|p| glob::matches(p, k))
                });
                Reply::Array(vec![
                    Reply::text(page.cursor.to_string()),
                    Reply::Array(page.keys.into_iter().map(Reply::Bulk).collect()),
                ])
            }
            Data::Set {
                key,
                value,
                cond,
                get,
                expiry,
            } => {
                let old = self.get(key).cloned();
                let reply_old = || if *get { bulk(old.as_ref()) } else { Reply::Nil };
                match (cond, &old) {
                    (Some(Cond::Nx), Some(_)) | (Some(Cond::Xx), None) => return reply_old(),
                    _ => {}
                }
                let expire_at = match expiry {
                    SetExpiry::None => None,
                    SetExpiry::Keep => old.as_ref().and_then(|e| e.expire_at),
                    SetExpiry::In(ms) => match now.checked_add(*ms) {
                        Some(t) => Some(t),
                        None => return Reply::error("ERR invalid expire time in 'set' command"),
                    },
                    SetExpiry::At(t) => Some(*t),
                };
                if expire_at.is_some_and(|t| t <= now) {
                    // Already expired (an EXAT in the past): the key is gone, as Redis
                    // deletes it.
                    if old.is_some() {
                        self.push(Op::Del { key: key.clone() });
                    }
                } else {
                    self.push(Op::Set {
                        key: key.clone(),
                        value: value.clone(),
                        expire_at,
                    });
                }
                if *get {
                    bulk(old.as_ref())
                } else {
                    Reply::ok()
                }
            }
            Data::GetDel(k) => {
                let old = self.get(k).cloned();
                if old.is_some() {
                    self.push(Op::Del { key: k.clone() });
                }
                bulk(old.as_ref())
            }
            Data::Del(keys) => {
                let mut n = 0;
                for k in keys {
                    if self.get(k).is_some() {
                        self.push(Op::Del { key: k.clone() });
                        n += 1;
                    }
                }
                Reply::Int(n)
            }
            Data::Mset(pairs) => {
                for (k, v) in pairs {
                    self.push(Op::Set {
                        key: k.clone(),
                        value: v.clone(),
                        expire_at: None,
                    });
                }
                Reply::ok()
            }
            Data::IncrBy { key, by } => {
                let old = self.get(key).cloned();
                let current = match &old {
                    None => 0,
                    Some(e) => match crate::command::int(&e.value) {
                        Some(v) => v,
                        None => return Reply::error("ERR value is not an integer or out of range"),
                    },
                };
                let Some(next) = current.checked_add(*by) else {
                    return Reply::error("ERR increment or decrement would overflow");
                };
                self.push(Op::Set {
                    key: key.clone(),
                    value: Bytes::from(next.to_string()),
                    // INCR keeps the key's expiry.
                    expire_at: old.and_then(|e| e.expire_at),
                });
                Reply::Int(next)
            }
            Data::Append(key, tail) => {
                let old = self.get(key).cloned();
                let mut v = BytesMut::new();
                if let Some(e) = &old {
                    v.extend_from_slice(&e.value);
                }
                v.extend_from_slice(tail);
                let len = v.len() as i64;
                self.push(Op::Set {
                    key: key.clone(),
                    value: v.freeze(),
                    expire_at: old.and_then(|e| e.expire_at),
                });
                Reply::Int(len)
            }
            Data::Expire {
                key,
                ms,
                cond,
                name,
            } => {
                let Some(e) = self.get(key) else {
                    return Reply::Int(0);
                };
                let Some(at) = (now as i64).checked_add(*ms) else {
                    return Reply::error(format!("ERR invalid expire time in '{name}' command"));
                };
                let current = e.expire_at;
                let at_u = at.max(0) as u64;
                // A key without expiry has an infinite TTL for GT and LT.
                let allowed = match cond {
                    None => true,
                    Some(ExpireCond::Nx) => current.is_none(),
                    Some(ExpireCond::Xx) => current.is_some(),
                    Some(ExpireCond::Gt) => current.is_some_and(|c| at_u > c),
                    Some(ExpireCond::Lt) => current.is_none_or(|c| at_u < c),
                };
                if !allowed {
                    return Reply::Int(0);
                }
                if at_u <= now {
                    // A timeout in the past deletes the key (Redis propagates a DEL).
                    self.push(Op::Del { key: key.clone() });
                } else {
                    self.push(Op::Expire {
                        key: key.clone(),
                        at: at_u,
                    });
                }
                Reply::Int(1)
            }
            Data::Persist(key) => match self.get(key) {
                Some(Entry {
                    expire_at: Some(_), ..
                }) => {
                    self.push(Op::Persist { key: key.clone() });
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
        }
    }
}

fn bulk(e: Option<&Entry>) -> Reply {
    e.map_or(Reply::Nil, |e| Reply::Bulk(e.value.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{parse, Command};
    use crate::record::WriteRecord;

    /// Runs `lines` one command each against `store` at `now`, applying each one's
    /// effects as a leader would; returns the replies.
    fn run(store: &mut Store, now: u64, lines: &[&str]) -> Vec<Reply> {
        lines
            .iter()
            .map(|l| {
                let args: Vec<Bytes> = l.split(' ').map(|a| Bytes::from(a.to_owned())).collect();
                let Ok(Command::Data(d)) = parse(&args) else {
                    panic!("{l}: not a data command");
                };
                let mut tx = Tx::new(store, now);
                let reply = tx.run(&d);
                let ops = tx.into_ops();
                store.apply(&WriteRecord {
                    origin: "n1".into(),
                    ts: Timestamp::new(now, 0),
                    ops,
                });
                reply
            })
            .collect()
    }

    fn b(s: &str) -> Reply {
        Reply::Bulk(Bytes::from(s.to_owned()))
    }

    #[test]
    fn strings_and_counters() {
        let mut s = Store::new();
        let r = run(
            &mut s,
            1000,
            &[
                "SET k v",
                "GET k",
                "SET k w NX",
                "SET k w XX GET",
                "APPEND k !",
                "STRLEN k",
                "INCR n",
                "INCRBY n 41",
                "DECR n",
                "DECRBY n 2",
                "INCR k",
                "MSET a 1 b 2",
                "MGET a b c",
                "EXISTS a b c a",
                "GETDEL a",
                "DEL a b c",
                "DBSIZE",
            ],
        );
        assert_eq!(
            r,
            vec![
                Reply::ok(),
                b("v"),
                Reply::Nil,
                b("v"),
                Reply::Int(2),
                Reply::Int(2),
                Reply::Int(1),
                Reply::Int(42),
                Reply::Int(41),
                Reply::Int(39),
                Reply::error("ERR value is not an integer or out of range"),
                Reply::ok(),
                Reply::Array(vec![b("1"), b("2"), Reply::Nil]),
                Reply::Int(3),
                b("1"),
                Reply::Int(1),
                Reply::Int(2),
            ]
        );
        let r = run(&mut s, 1000, &["SET big 9223372036854775807", "INCR big"]);
        assert_eq!(
            r[1],
            Reply::error("ERR increment or decrement would overflow")
        );
    }

    #[test]
    fn expiry_is_absolute_and_decided_once() {
        let mut s = Store::new();
        let r = run(
            &mut s,
            10_000,
            &[
                "SET k v EX 10",
                "TTL k",
                "PTTL k",
                "SET j v",
                "TTL j",
                "TTL nope",
            ],
        );
        assert_eq!(
            &r[1..],
            &[
                Reply::Int(10),
                Reply::Int(10_000),
                Reply::ok(),
                Reply::Int(-1),
                Reply::Int(-2)
            ]
        );
        // The record holds the absolute time: a replica applying it later agrees.
        assert_eq!(
            s.entry(&Bytes::from("k")).and_then(|e| e.expire_at),
            Some(20_000)
        );
        // INCR and APPEND keep the expiry; SET without KEEPTTL drops it.
        let r = run(
            &mut s,
            15_000,
            &[
                "APPEND k x",
                "PTTL k",
                "SET k v KEEPTTL",
                "PTTL k",
                "SET k v",
                "TTL k",
            ],
        );
        assert_eq!(r[1], Reply::Int(5_000));
        assert_eq!(r[3], Reply::Int(5_000));
        assert_eq!(r[5], Reply::Int(-1));
        // Conditions, and a past time deleting the key.
        let r = run(
            &mut s,
            15_000,
            &[
                "EXPIRE k 100 XX",
                "EXPIRE k 100 NX",
                "EXPIRE k 50 GT",
                "EXPIRE k 50 LT",
                "PERSIST k",
                "PERSIST k",
                "PEXPIRE k -1",
                "EXISTS k",
            ],
        );
        assert_eq!(
            r,
            vec![
                Reply::Int(0),
                Reply::Int(1),
                Reply::Int(0),
                Reply::Int(1),
                Reply::Int(1),
                Reply::Int(0),
                Reply::Int(1),
                Reply::Int(0)
            ]
        );
        // Once past its time a key reads as absent, before any Expired op removes it.
        run(&mut s, 20_000, &["SET e v PX 5"]);
        assert_eq!(
            run(&mut s, 20_005, &["GET e", "EXISTS e", "TTL e"]),
            vec![Reply::Nil, Reply::Int(0), Reply::Int(-2)]
        );
        assert_eq!(s.due(20_005, 10), vec![Bytes::from("e")]);
    }

    /// Commands in one transaction see each other's effects; the store is untouched
    /// until the caller applies them.
    #[test]
    fn a_transaction_sees_its_own_writes_and_changes_nothing_until_applied() {
        let s = Store::new();
        let mut tx = Tx::new(&s, 0);
        let k = Bytes::from("k");
        tx.run(&Data::IncrBy {
            key: k.clone(),
            by: 5,
        });
        assert_eq!(
            tx.run(&Data::IncrBy {
                key: k.clone(),
                by: 1
            }),
            Reply::Int(6)
        );
        assert_eq!(tx.run(&Data::Del(vec![k.clone()])), Reply::Int(1));
        assert_eq!(tx.run(&Data::Get(k.clone())), Reply::Nil);
        assert_eq!(tx.into_ops().len(), 3);
        assert!(s.is_empty());
    }

    #[test]
    fn keys_and_scan_match_patterns() {
        let mut s = Store::new();
        run(&mut s, 0, &["MSET user:1 a user:2 b other c"]);
        let Reply::Array(mut keys) = run(&mut s, 0, &["KEYS user:*"]).remove(0) else {
            panic!()
        };
        keys.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(keys, vec![b("user:1"), b("user:2")]);
        let r = run(
            &mut s,
            0,
            &["SCAN 0 MATCH oth* COUNT 100", "SCAN 0 TYPE hash"],
        );
        assert_eq!(
            r[0],
            Reply::Array(vec![b("0"), Reply::Array(vec![b("other")])])
        );
        assert_eq!(r[1], Reply::Array(vec![b("0"), Reply::Array(vec![])]));
    }
}
