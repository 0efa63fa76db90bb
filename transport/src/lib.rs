//! # walship-transport
//!
//! The replication protocol between a walship leader and its followers.
//!
//! This crate currently holds the protocol's pure parts, which the QUIC sessions are built
//! on: the versioned wire format ([`wire`]) and the sync-quorum arithmetic ([`quorum`]).
//! Neither does any I/O; both are tested directly. The cluster security layer ([`tls`])
//! makes the cluster CA and node certificates and the mutual-TLS quinn configs.

#![warn(missing_docs, unreachable_pub)]

pub mod quorum;
pub mod tls;
pub mod wire;
