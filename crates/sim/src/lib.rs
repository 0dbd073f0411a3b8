//! The deterministic discrete-event mesh simulator.
//!
//! It drives real `core` [`Engine`](instaconnect_core::engine::Engine)s, each on its own
//! in-memory store, with a virtual clock and seeded randomness: links come and go with a
//! mobility model (static grid, random waypoint, random pairwise meetings, or a contact trace),
//! frames travel with latency, bandwidth and loss, devices churn, partitions and crashes are
//! injected, and a workload sends texts between contacts. The same scenario and seed give
//! byte-identical outputs. `simulations/README.md` documents the scenario format and metrics.
//!
//! ```no_run
//! use std::path::Path;
//! let scenario = instaconnect_sim::Scenario::from_toml_file(Path::new("simulations/lan-party.toml"))?;
//! let summary = instaconnect_sim::run(&scenario, scenario.seed, Path::new("out"), &mut |_done| {})?;
//! println!("delivery probability {:?}", summary.delivery_probability);
//! # Ok::<(), instaconnect_sim::SimError>(())
//! ```
//!
//! Routing strategies: `direct` (engines talk over current links), `relays` (the product's
//! store-and-forward relays, each a real sans-IO `Relay`, reachable by every device that is up),
//! and `flooding` / `spray_and_wait` (the engines' mailbox requests answered by carry buffers on
//! the devices, copied from device to device on contact). Group messages are not simulated;
//! crypto is always real (skipping it would need a seam in `core`).

mod error;
pub mod mobility;
mod report;
pub mod scenario;
pub mod sweep;
pub mod trace;
pub mod units;
mod world;

use std::path::Path;

pub use error::SimError;
pub use report::{nearest_rank, LatencyStats, MessageRow, Report, Summary, MAX_PLOT_POINTS};
pub use scenario::Scenario;
pub use world::{phone_of, EPOCH_MS, MAX_QUEUED_EVENTS};

/// Runs `scenario` with `seed` and writes `summary.json`, `messages.csv`, `delivery.svg` and
/// `latency_cdf.svg` into `out` (created if missing). `progress` is called with the fraction of
/// virtual time simulated (0.0 to 1.0, at most about a thousand times).
///
/// The outputs are written even when an end-of-run invariant fails, so the failing run can be
/// inspected; the error then names the seed.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    out: &Path,
    progress: &mut dyn FnMut(f64),
) -> Result<Summary, SimError> {
    let report = simulate_unchecked(scenario, seed, progress)?;
    report.write(out, scenario)?;
    check(seed, report).map(|r| r.summary)
}

/// Runs `scenario` with `seed` in memory, without writing files. Fails if an invariant fails.
pub fn simulate(
    scenario: &Scenario,
    seed: u64,
    progress: &mut dyn FnMut(f64),
) -> Result<Report, SimError> {
    let report = simulate_unchecked(scenario, seed, progress)?;
    check(seed, report)
}

fn simulate_unchecked(
    scenario: &Scenario,
    seed: u64,
    progress: &mut dyn FnMut(f64),
) -> Result<Report, SimError> {
    scenario.validate()?;
    let world = world::World::new(scenario, seed)?;
    let outcome = world.run(progress)?;
    Ok(report::build(scenario, seed, outcome))
}

fn check(seed: u64, report: Report) -> Result<Report, SimError> {
    if report.violation_count == 0 {
        return Ok(report);
    }
    let mut violations = report.violations;
    let listed = violations.len();
    if report.violation_count > listed {
        violations.push(format!("and {} more", report.violation_count - listed));
    }
    Err(SimError::Invariant { seed, violations })
}
