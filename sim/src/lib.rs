//! walship's seeded cluster simulator (issue 12, part 3): three nodes built from the
//! real decision logic — [`RoleDecider`](walship_transport::role::RoleDecider), the
//! leader's [`Registry`](walship_transport::session::registry::Registry), the sans-I/O
//! leader and follower sessions — over real engine logs on simulated disks
//! ([`SimDisk`](walship_engine::storage::SimDisk)), a simulated coordinator with etcd's
//! rules, a simulated network, writers, and faults at any step. One seed decides
//! everything; a failing seed prints its trace and the command that replays it.
//!
//! ```
//! let report = walship_sim::run_seed(1, walship_sim::Config::default()).map_err(|f| f.what)?;
//! assert!(report.acked_remote > 0);
//! # Ok::<(), String>(())
//! ```

mod coord;
mod world;

pub use world::{Config, Failure, Report, World};

/// Runs one seed.
///
/// # Errors
/// The invariant that broke, with the trace of the run.
pub fn run_seed(seed: u64, cfg: Config) -> Result<Report, Failure> {
    World::new(seed).run(cfg)
}
