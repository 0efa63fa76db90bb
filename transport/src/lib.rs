//! # walship-transport
//!
//! The replication protocol between a walship leader and its followers, over QUIC with
//! mutual TLS.
//!
//! - [`Leader`] and [`Follower`] (the [`driver`]): bind the protocol to
//!   quinn, tokio and the engine. The leader streams its log to every follower and turns
//!   their acknowledgements into the engine's remote watermarks; the follower appends
//!   what it receives verbatim and applies it through the embedder's [`Apply`].
//! - [`wire`]: the versioned frame format and a streaming decoder that refuses anything
//!   malformed, oversized, discontinuous or from an older epoch;
//! - [`session`]: the leader's and follower's session logic as sans-I/O state machines;
//! - [`quorum`]: PostgreSQL's `synchronous_standby_names` arithmetic (FIRST/ANY k);
//! - [`role`]: a node's role decisions (lead, follow, step down, campaign), without I/O;
//! - [`slots`]: retention slots, capped by `max_retained_bytes`;
//! - [`compress`]: zstd for shipped data, skipped when it does not pay;
//! - [`lag`]: write/flush/apply lag in time;
//! - [`status`]: what `status()` reports;
//! - [`tls`]: the cluster CA, node certificates and mutual-TLS quinn configurations;
//! - [`udp`]: the endpoints' UDP sockets (large datagrams, each GSO send within 64 KiB).
//!
//! Everything but the driver, `tls` and `udp` does no network I/O and is tested directly.

#![warn(missing_docs, unreachable_pub)]

pub mod committed;
pub mod compress;
pub mod coordinator;
pub mod driver;
mod durable;
pub mod hops;
pub mod lag;
pub mod node;
pub mod quorum;
pub mod role;
pub mod session;
pub mod slots;
pub mod snapshot;
pub mod status;
pub mod tls;
pub mod udp;
pub mod wire;

pub use compress::CompressionOptions;
pub use driver::{
    Apply, ApplyError, Follower, FollowerOptions, Leader, LeaderOptions, Security, TransportError,
    MAX_CONNECTIONS_PER_FOLLOWER, MAX_FOLLOWER_CONNECTIONS, SEEN_EPOCH_FILE,
};
pub use node::{Node, NodeOptions, NodeRole, NodeStatus, ReadToken};
pub use quorum::SyncPolicy;
