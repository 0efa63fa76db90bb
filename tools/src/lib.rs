//! # walship-tools
//!
//! The library half of the `walship` operator binary: what more than one subcommand
//! needs. Each subcommand is a module of the binary (`src/cmd/`); what they share lives
//! here, so that later subcommands (`serve`, `status`, `lag`, …) print and exit the same
//! way.
//!
//! - [`outcome`]: how a subcommand ends and the exit code that tells a script so;
//! - [`text`]: output operators can read: aligned tables, payloads, timestamps, sizes;
//! - [`config`]: `walship serve`'s TOML file, validated key by key;
//! - [`admin`]: the node's admin endpoint (`/status`, `/metrics`, append, promote) and
//!   the CLI's client for it;
//! - [`view`]: the JSON shape of `/status`;
//! - [`metrics`]: the Prometheus metrics behind `/metrics`;
//! - [`serve`]: running a node from its configuration, with an [`serve::Embedder`] on top.

#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod config;
pub mod metrics;
pub mod outcome;
pub mod serve;
pub mod text;
pub mod view;
