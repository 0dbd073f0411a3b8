//! `instaconnect sim run`: runs a mesh simulation of the node logic (`crates/sim`) in this
//! process, with a progress line on a terminal, and prints the summary.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::anyhow;

use crate::cli::SimCmd;
use crate::output::Out;
use crate::{usage, Failure};

pub fn run(cmd: &SimCmd, json: bool, out: &mut Out) -> Result<u8, Failure> {
    let SimCmd::Run {
        scenario,
        seed,
        out: dir,
    } = cmd;
    let sc =
        instaconnect_sim::Scenario::from_toml_file(scenario).map_err(|e| usage(anyhow!("{e}")))?;
    let seed = seed.unwrap_or(sc.seed);
    let dir = dir.clone().unwrap_or_else(|| {
        let name = scenario
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        PathBuf::from("sim-out").join(format!("{name}-{seed}"))
    });
    let tty = std::io::stderr().is_terminal();
    let mut last = -1i64;
    let mut progress = |f: f64| {
        let pct = (f * 100.0).floor() as i64;
        if tty && pct != last {
            last = pct;
            let bar = "#".repeat((pct / 5) as usize);
            eprint!("\rsimulating [{bar:<20}] {pct:>3}%");
            let _ = std::io::stderr().flush();
        }
    };
    let started = std::time::Instant::now();
    let result = instaconnect_sim::run(&sc, seed, &dir, &mut progress);
    if tty {
        eprintln!();
    }
    let summary = result.map_err(|e| Failure::Failed(anyhow!("{e}")))?;
    let wall = started.elapsed().as_secs_f64();
    if json {
        out.json(&summary)?;
    } else {
        let pct = |p: Option<f64>| p.map_or("-".into(), |p| format!("{:.1}%", p * 100.0));
        out.line(format!("scenario     {} (seed {seed})", scenario.display()));
        out.line(format!(
            "devices      {} ({} relays), {:.1} simulated hours",
            summary.devices,
            summary.relays,
            summary.duration_ms as f64 / 3_600_000.0
        ));
        out.line(format!(
            "messages     {} created, {} delivered ({})",
            summary.created,
            summary.delivered,
            pct(summary.delivery_probability)
        ));
        if let Some(l) = &summary.latency_ms {
            out.line(format!(
                "latency      mean {:.0} ms, median {} ms, p95 {} ms",
                l.mean, l.median, l.p95
            ));
        }
        out.line(format!(
            "overhead     {} frames per delivered message",
            summary
                .overhead_ratio
                .map_or("-".into(), |o| format!("{o:.2}"))
        ));
        out.line(format!(
            "speed        {:.1} node-hours per wall second ({wall:.1} s)",
            summary.node_hours / wall.max(1e-9)
        ));
        out.line(format!("outputs      {}", dir.display()));
    }
    Ok(0)
}
