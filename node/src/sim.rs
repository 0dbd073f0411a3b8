//! `instaconnect sim run`: runs a mesh simulation of the node logic (`crates/sim`) in this
//! process, with a progress line on a terminal, and prints the summary. `instaconnect sim
//! sweep` runs it over seeds and parameter values and prints the aggregated table.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::cli::SimCmd;
use crate::output::Out;
use crate::{usage, Failure};

pub fn run(cmd: &SimCmd, json: bool, out: &mut Out) -> Result<u8, Failure> {
    match cmd {
        SimCmd::Run {
            scenario,
            seed,
            out: dir,
        } => run_one(scenario, *seed, dir.as_deref(), json, out),
        SimCmd::Sweep {
            scenario,
            seeds,
            set,
            out: dir,
        } => sweep(scenario, seeds, set, dir.as_deref(), json, out),
    }
}

fn run_one(
    scenario: &Path,
    seed: Option<u64>,
    dir: Option<&Path>,
    json: bool,
    out: &mut Out,
) -> Result<u8, Failure> {
    let sc =
        instaconnect_sim::Scenario::from_toml_file(scenario).map_err(|e| usage(anyhow!("{e}")))?;
    let seed = seed.unwrap_or(sc.seed);
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| {
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

/// Bad input (the scenario, `--seeds`, `--set`) is a usage error; anything else a failure.
fn sim_failure(e: instaconnect_sim::SimError) -> Failure {
    use instaconnect_sim::SimError as E;
    match e {
        E::Syntax { .. }
        | E::Scenario { .. }
        | E::Unsupported { .. }
        | E::Trace { .. }
        | E::Argument { .. } => usage(anyhow!("{e}")),
        e => Failure::Failed(anyhow!("{e}")),
    }
}

fn sweep(
    scenario: &Path,
    seeds: &str,
    sets: &[String],
    dir: Option<&Path>,
    json: bool,
    out: &mut Out,
) -> Result<u8, Failure> {
    use instaconnect_sim::sweep;
    let seeds = sweep::parse_seeds(seeds).map_err(sim_failure)?;
    let sets: Vec<sweep::Set> = sets
        .iter()
        .map(|s| sweep::parse_set(s))
        .collect::<Result<_, _>>()
        .map_err(sim_failure)?;
    // Loads (and checks) the file itself first, so an unreadable file is a usage error too.
    instaconnect_sim::Scenario::from_toml_file(scenario).map_err(|e| usage(anyhow!("{e}")))?;
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| {
        let name = scenario
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        PathBuf::from("sim-out").join(format!("{name}-sweep"))
    });
    let tty = std::io::stderr().is_terminal();
    let mut last = (u64::MAX, -1i64);
    let mut progress = |p: sweep::Progress| {
        // The whole sweep's share done: finished runs plus this run's share of virtual time.
        let pct = (((p.index as f64 + p.fraction) / p.total as f64) * 100.0).floor() as i64;
        if tty && (p.index, pct) != last {
            last = (p.index, pct);
            let bar = "#".repeat((pct / 5) as usize);
            eprint!(
                "\rsweeping [{bar:<20}] {pct:>3}%  run {}/{} (seed {})   ",
                p.index + 1,
                p.total,
                p.seed
            );
            let _ = std::io::stderr().flush();
        }
    };
    let started = std::time::Instant::now();
    let result = sweep::sweep(scenario, seeds, &sets, &dir, &mut progress);
    if tty {
        eprintln!();
    }
    let report = result.map_err(sim_failure)?;
    let wall = started.elapsed().as_secs_f64();
    if json {
        out.json(&report)?;
    } else {
        print_table(&report, out);
        let runs: usize = report
            .combinations
            .iter()
            .map(|c| c.runs + c.failed.len())
            .sum();
        out.line(format!(
            "{runs} runs in {wall:.1} s; sweep.json, sweep.csv and each run's outputs in {}",
            dir.display()
        ));
    }
    let failures = report.failures();
    if failures.is_empty() {
        return Ok(0);
    }
    for (label, f) in &failures {
        out.note(format!(
            "run failed ({label}, seed {}): {}",
            f.seed, f.error
        ));
    }
    let seeds: Vec<String> = failures.iter().map(|(_, f)| f.seed.to_string()).collect();
    Err(Failure::Failed(anyhow!(
        "{} of the sweep's runs failed (seeds {}); rerun one with `instaconnect sim run {} --seed N`",
        failures.len(),
        seeds.join(", "),
        scenario.display()
    )))
}

/// One line per combination: the headline metrics as mean ± half the 95% interval.
fn print_table(report: &instaconnect_sim::sweep::SweepReport, out: &mut Out) {
    const COLUMNS: [(&str, &str, f64, usize); 5] = [
        ("delivery_probability", "delivery %", 100.0, 1),
        ("latency_ms.mean", "latency mean s", 0.001, 2),
        ("latency_ms.p95", "latency p95 s", 0.001, 2),
        ("overhead_ratio", "overhead", 1.0, 2),
        ("created", "created", 1.0, 0),
    ];
    let params = |c: &instaconnect_sim::sweep::Combination| {
        if c.parameters.0.is_empty() {
            "(scenario as written)".to_string()
        } else {
            c.parameters
                .0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let width = report
        .combinations
        .iter()
        .map(|c| params(c).len())
        .max()
        .unwrap_or(0)
        .max(10);
    let mut head = format!("{:<width$}  {:>4}", "parameters", "runs");
    for (_, title, _, _) in COLUMNS {
        head.push_str(&format!("  {title:>22}"));
    }
    out.line(head);
    for c in &report.combinations {
        let mut line = format!("{:<width$}  {:>4}", params(c), c.runs);
        for (metric, _, scale, digits) in COLUMNS {
            let cell = c
                .metrics
                .0
                .iter()
                .find(|(n, _)| n == metric)
                .map(|(_, s)| {
                    let half = s.ci95_high.map(|h| (h - s.mean) * scale);
                    match half {
                        Some(h) => format!("{:.digits$} ± {:.digits$}", s.mean * scale, h),
                        None => format!("{:.digits$}", s.mean * scale),
                    }
                })
                .unwrap_or_else(|| "-".into());
            line.push_str(&format!("  {cell:>22}"));
        }
        out.line(line);
    }
    out.line(
        "(mean ± half-width of the 95% confidence interval, Student's t, n-1 degrees of freedom)",
    );
}
