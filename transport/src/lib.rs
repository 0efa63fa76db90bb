//! # walship-transport
//!
//! The replication protocol between a walship leader and its followers.
//!
//! What exists is the protocol's core, which the QUIC driver binds to quinn, tokio and the
//! engine:
//! - [`wire`]: the versioned frame format and a streaming decoder that refuses anything
//!   malformed, oversized, discontinuous or from an older epoch;
//! - [`session`]: the leader's and follower's session logic as sans-I/O state machines;
//! - [`quorum`]: PostgreSQL's `synchronous_standby_names` arithmetic (FIRST/ANY k);
//! - [`tls`]: the cluster CA, node certificates and mutual-TLS quinn configurations.
//!
//! The first three do no I/O and are tested directly; `tls` is tested over real QUIC.

#![warn(missing_docs, unreachable_pub)]

pub mod quorum;
pub mod session;
pub mod tls;
pub mod wire;
