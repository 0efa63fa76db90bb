//! What `/metrics` exposes, in Prometheus text format (`prometheus-client`).
//!
//! Positions and lags are read from the node's status at each scrape (they are gauges
//! of state the node already keeps); commit latencies are observed as commits complete
//! through the admin endpoint ([`Metrics::observe_commit`]), one histogram per
//! durability level. Byte counters are advanced by what was shipped since the previous
//! scrape, so they only ever grow, as Prometheus counters must.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use walship_engine::{Durability, Watermarks};
use walship_transport::{NodeRole, NodeStatus};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Level {
    level: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerKind {
    follower: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Follower {
    follower: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// Commit latency buckets: 10 µs doubling to about 84 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 2.0, 24))
}

/// A node's metrics; see the [module docs](self).
pub struct Metrics {
    registry: Registry,
    is_leader: Gauge,
    epoch: Gauge,
    lsn: Family<Kind, Gauge>,
    lag_bytes: Family<FollowerKind, Gauge>,
    lag_seconds: Family<FollowerKind, F64Gauge>,
    streaming: Family<Follower, Gauge>,
    shipped: Family<FollowerKind, Counter>,
    compression: Family<Follower, F64Gauge>,
    rtt: Family<Follower, F64Gauge>,
    path_mtu: Family<Follower, Gauge>,
    received: Family<Kind, Counter>,
    commits: Family<Level, Histogram, fn() -> Histogram>,
    commit_failures: Family<Level, Counter>,
    certificate_expiry: Gauge,
    /// The node's certificate, whose expiry is read at each scrape (it may be renewed).
    credentials: Mutex<Option<std::sync::Arc<walship_transport::tls::Credentials>>>,
    /// Byte totals at the previous scrape, to advance the counters by the difference.
    last: Mutex<HashMap<(String, &'static str), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Reports the expiry of the certificate in force in `credentials` at every scrape.
    pub fn follow_certificate(
        &self,
        credentials: std::sync::Arc<walship_transport::tls::Credentials>,
    ) {
        *self
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(credentials);
    }

    /// Records when the node's certificate expires.
    pub fn set_certificate_expiry(&self, not_after: std::time::SystemTime) {
        let secs = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.certificate_expiry.set(secs);
    }

    /// Registers every metric under the `walship_` prefix.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("walship");
        let m = Metrics {
            is_leader: Gauge::default(),
            epoch: Gauge::default(),
            lsn: Family::default(),
            lag_bytes: Family::default(),
            lag_seconds: Family::default(),
            streaming: Family::default(),
            shipped: Family::default(),
            compression: Family::default(),
            rtt: Family::default(),
            path_mtu: Family::default(),
            received: Family::default(),
            commits: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            commit_failures: Family::default(),
            certificate_expiry: Gauge::default(),
            credentials: Mutex::new(None),
            last: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        r.register("is_leader", "1 while this node leads", m.is_leader.clone());
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When this node's own certificate expires (Unix time); renew it before (walship certs renew)",
            m.certificate_expiry.clone(),
        );
        r.register(
            "epoch",
            "The epoch led, or the highest seen by a follower",
            m.epoch.clone(),
        );
        r.register(
            "log_lsn",
            "Positions of the local log (kind: start, end, written, flushed, remote_written, remote_flushed, remote_applied)",
            m.lsn.clone(),
        );
        r.register(
            "follower_lag_bytes",
            "Bytes of log between the leader's end and a follower's write, flush or apply position",
            m.lag_bytes.clone(),
        );
        r.register(
            "follower_lag_seconds",
            "Time recent data took to be written, flushed or applied by a follower (pg_stat_replication's *_lag)",
            m.lag_seconds.clone(),
        );
        r.register(
            "follower_streaming",
            "1 while a follower streams (caught up), 0 in catch-up or disconnected",
            m.streaming.clone(),
        );
        r.register(
            "shipped_bytes",
            "Bytes shipped to a follower (kind: raw log bytes, or wire bytes after compression)",
            m.shipped.clone(),
        );
        r.register(
            "compression_ratio",
            "Raw log bytes per wire byte shipped to a follower",
            m.compression.clone(),
        );
        r.register(
            "follower_rtt_seconds",
            "Smoothed QUIC round-trip time to a connected follower",
            m.rtt.clone(),
        );
        r.register(
            "follower_path_mtu_bytes",
            "The largest datagram the path to a connected follower carries (QUIC's path MTU)",
            m.path_mtu.clone(),
        );
        r.register(
            "received_bytes",
            "Bytes received from the leader (kind: raw or wire)",
            m.received.clone(),
        );
        r.register(
            "commit_latency_seconds",
            "Latency of commits made through the admin endpoint, per durability level",
            m.commits.clone(),
        );
        r.register(
            "commit_failures",
            "Commits through the admin endpoint that failed, per durability level",
            m.commit_failures.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Records a commit at `level` that took `took`, or failed.
    pub fn observe_commit(&self, level: Durability, took: Duration, ok: bool) {
        let l = Level {
            level: level.as_str().into(),
        };
        if ok {
            self.commits.get_or_create(&l).observe(took.as_secs_f64());
        } else {
            self.commit_failures.get_or_create(&l).inc();
        }
    }

    /// Advances a byte counter to `total`.
    fn advance(&self, counter: &Counter, key: (String, &'static str), total: u64) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let before = last.insert(key, total).unwrap_or(0);
        // A restarted session starts its totals again: count what it has sent since.
        let delta = if total >= before {
            total - before
        } else {
            total
        };
        counter.inc_by(delta);
    }

    /// The metrics, as of `status` and `w`, in Prometheus text format.
    pub fn render(&self, status: &NodeStatus, w: &Watermarks) -> String {
        let followed = self
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(info) = followed.and_then(|c| c.identity().info().ok()) {
            self.set_certificate_expiry(info.not_after);
        }
        self.is_leader
            .set(i64::from(matches!(status.role, NodeRole::Leader { .. })));
        for (kind, v) in [
            ("start", w.start),
            ("end", w.end),
            ("written", w.written),
            ("flushed", w.flushed),
            ("remote_written", w.remote_written),
            ("remote_flushed", w.remote_flushed),
            ("remote_applied", w.remote_applied),
        ] {
            self.lsn
                .get_or_create(&Kind { kind: kind.into() })
                .set(i64::try_from(v.get()).unwrap_or(i64::MAX));
        }
        if let Some(l) = &status.leading {
            self.epoch
                .set(i64::try_from(l.epoch.get()).unwrap_or(i64::MAX));
            for f in &l.followers {
                let fk = |kind: &str| FollowerKind {
                    follower: f.node_id.clone(),
                    kind: kind.into(),
                };
                for (kind, bytes, secs) in [
                    ("write", f.write_lag_bytes, f.lag.write),
                    ("flush", f.flush_lag_bytes, f.lag.flush),
                    ("apply", f.apply_lag_bytes, f.lag.apply),
                ] {
                    self.lag_bytes
                        .get_or_create(&fk(kind))
                        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                    self.lag_seconds
                        .get_or_create(&fk(kind))
                        .set(secs.map_or(0.0, |d| d.as_secs_f64()));
                }
                let who = Follower {
                    follower: f.node_id.clone(),
                };
                self.streaming.get_or_create(&who).set(i64::from(
                    f.state == walship_transport::status::StreamState::Streaming,
                ));
                self.advance(
                    &self.shipped.get_or_create(&fk("raw")),
                    (f.node_id.clone(), "raw"),
                    f.bytes_raw,
                );
                self.advance(
                    &self.shipped.get_or_create(&fk("wire")),
                    (f.node_id.clone(), "wire"),
                    f.bytes_wire,
                );
                if f.bytes_wire > 0 {
                    self.compression
                        .get_or_create(&who)
                        .set(f.bytes_raw as f64 / f.bytes_wire as f64);
                }
                if let (Some(rtt), Some(mtu)) = (f.rtt, f.path_mtu) {
                    self.rtt.get_or_create(&who).set(rtt.as_secs_f64());
                    self.path_mtu.get_or_create(&who).set(i64::from(mtu));
                }
            }
        }
        if let Some(f) = &status.following {
            self.epoch
                .set(i64::try_from(f.epoch.get()).unwrap_or(i64::MAX));
            for (kind, total) in [("raw", f.bytes_raw), ("wire", f.bytes_wire)] {
                self.advance(
                    &self.received.get_or_create(&Kind { kind: kind.into() }),
                    (String::new(), kind),
                    total,
                );
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
