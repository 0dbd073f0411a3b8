//! The simulator benchmark (issue 7): simulated node-hours per wall-clock second and peak
//! resident memory for the shipped campus and city scenarios, with the time spent setting up
//! (creating devices and linking contacts) shown apart from the run itself.
//!
//! Run it with `scripts/bench-sim` (release build); arguments are scenario names or paths
//! (default: campus city), `--set KEY=VALUE` (one value, as `sim sweep --set`, applied to every
//! scenario: `--set nodes.devices=1000 --set duration=2h` for a scaled run) and `--out DIR`
//! (write each scenario's outputs into `DIR/<name>`, to compare runs byte for byte). Target for the city: 10,000 devices, 24 simulated hours, 100,000
//! messages in under 10 minutes and 8 GiB on a 2-core machine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use instaconnect_sim::{simulate, sweep, Scenario};

/// Peak resident set size of this process in KiB (`VmHWM`), if the kernel reports it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak so each scenario's is its own (Linux: writing 5 to clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut names: Vec<String> = Vec::new();
    let mut sets: Vec<(String, toml::Value)> = Vec::new();
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--set" | "--out" => {
                let Some(v) = args.next() else {
                    eprintln!("{a} needs a value");
                    std::process::exit(2);
                };
                if a == "--out" {
                    out = Some(PathBuf::from(v));
                    continue;
                }
                match sweep::parse_set(&v) {
                    Ok(set) if set.values.len() == 1 => {
                        sets.push((set.key, set.values[0].clone()));
                    }
                    Ok(_) => {
                        eprintln!("--set {v}: one value only");
                        std::process::exit(2);
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        std::process::exit(2);
                    }
                }
            }
            // cargo bench passes `--bench`.
            _ if a.starts_with("--") => {}
            _ => names.push(a),
        }
    }
    if names.is_empty() {
        names = vec!["campus".into(), "city".into()];
    }
    println!(
        "{:<10} {:>7} {:>6} {:>8} {:>9} {:>8} {:>8} {:>10} {:>9} {:>8}",
        "scenario",
        "devices",
        "hours",
        "messages",
        "delivered",
        "setup s",
        "run s",
        "node-h/s",
        "events/s",
        "peak MiB"
    );
    for name in names {
        let path = if name.ends_with(".toml") {
            PathBuf::from(&name)
        } else {
            root.join("simulations").join(format!("{name}.toml"))
        };
        let sc = match Scenario::from_toml_file_with(&path, &sets) {
            Ok(sc) => sc,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        reset_peak_rss();
        let started = Instant::now();
        let mut setup_done: Option<f64> = None;
        let mut next_note = 0.0;
        let report = simulate(&sc, sc.seed, &mut |f| {
            // The first progress report comes with the first event, after setup.
            setup_done.get_or_insert_with(|| started.elapsed().as_secs_f64());
            // A line per 5% on stderr, so a long run can be extrapolated while it goes.
            if f >= next_note {
                eprintln!(
                    "{name}: {:>3.0}% of virtual time after {:.0} s",
                    f * 100.0,
                    started.elapsed().as_secs_f64()
                );
                next_note = f + 0.05;
            }
        });
        let wall = started.elapsed().as_secs_f64();
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{name}: {e}");
                std::process::exit(1);
            }
        };
        if let Some(dir) = &out {
            let stem = path.file_stem().unwrap_or_default();
            if let Err(e) = report.write(&dir.join(stem), &sc) {
                eprintln!("{name}: {e}");
                std::process::exit(1);
            }
        }
        let s = &report.summary;
        let setup = setup_done.unwrap_or(wall);
        println!(
            "{:<10} {:>7} {:>6.1} {:>8} {:>9} {:>8.1} {:>8.1} {:>10.0} {:>9.0} {:>8.0}",
            path.file_stem().unwrap_or_default().to_string_lossy(),
            s.devices,
            s.duration_ms as f64 / 3_600_000.0,
            s.created,
            s.delivered,
            setup,
            wall - setup,
            s.node_hours / wall,
            s.events as f64 / (wall - setup).max(1e-9),
            peak_rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0),
        );
    }
}
