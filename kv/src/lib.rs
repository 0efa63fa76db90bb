//! # walship-kv
//!
//! A replicated key-value database on walship that real Redis clients use: `redis-cli`,
//! `redis-benchmark` and the client libraries of every language talk to it unmodified
//! (RESP2, and RESP3 after `HELLO 3`).
//!
//! - [`resp`]: requests in (bounded before they are parsed), replies out;
//! - [`record`]: the log record of one write, with its origin node and [`hlc`] timestamp;
//! - [`store`]: the key space every node reaches by applying the log in LSN order;
//! - [`glob`]: Redis's key patterns;
//! - [`command`]: requests as typed commands; [`exec`]: running them against the state;
//! - [`db`]: the one write path (decide, log, apply) and the replicas' apply;
//! - [`snapshot`]: snapshot files; [`snapshotter`]: taking them in the background and
//!   checkpointing the log behind them;
//! - [`server`]: the RESP listener, its connections and the leader's expiry; [`tls`]: TLS
//!   on its port.

#![warn(missing_docs, unreachable_pub)]

pub mod command;
pub mod config;
mod conn;
pub mod db;
pub mod exec;
pub mod glob;
pub mod hlc;
mod info;
pub mod instance;
pub mod record;
pub mod resp;
pub mod server;
pub mod snapshot;
pub mod snapshotter;
pub mod store;
pub mod tls;
