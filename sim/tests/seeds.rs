//! The cluster simulator over a range of seeds: `WALSHIP_SIM_SEED` is the first seed
//! (default 1), `WALSHIP_SIM_SEEDS` how many (default 30), and `WALSHIP_SIM_VERBOSE=1`
//! prints every step of a run.

use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn every_seed_keeps_every_acknowledged_commit_and_converges() {
    let first = env("WALSHIP_SIM_SEED", 1);
    let n = env("WALSHIP_SIM_SEEDS", 30);
    let started = Instant::now();
    let mut total = walship_sim::Report::default();
    for seed in first..first + n {
        match walship_sim::run_seed(seed, walship_sim::Config::default()) {
            Ok(r) => {
                total.acked_local += r.acked_local;
                total.acked_remote += r.acked_remote;
                total.faults += r.faults;
                total.power_losses += r.power_losses;
                total.promotions += r.promotions;
                total.elections += r.elections;
                total.truncations += r.truncations;
            }
            Err(f) => panic!(
                "seed {seed} failed: {}\n  replay: WALSHIP_SIM_SEED={seed} WALSHIP_SIM_SEEDS=1 WALSHIP_SIM_VERBOSE=1 cargo test -p walship-sim --test seeds\n  the last steps:\n    {}",
                f.what,
                f.trace[f.trace.len().saturating_sub(60)..].join("\n    ")
            ),
        }
    }
    eprintln!(
        "cluster simulator: seeds {first}..{} in {:.1} s: {} RemoteFlush and {} Local commits acknowledged, {} faults ({} power losses, {} promotions), {} elections, {} truncations",
        first + n,
        started.elapsed().as_secs_f64(),
        total.acked_remote,
        total.acked_local,
        total.faults,
        total.power_losses,
        total.promotions,
        total.elections,
        total.truncations
    );
}
