//! Regenerates `simulations/reference/<name>/` (run by `scripts/sim-reference`): the same
//! library calls as `instaconnect sim run` and `instaconnect sim sweep`, in a release build of
//! this crate alone (the node binary would also build the network stack).
//!
//! Usage: cargo run --release -p instaconnect-sim --example reference -- [NAME...]

use std::path::Path;

use instaconnect_sim::{run, sweep, Scenario};

const ALL: [&str; 4] = ["lan-party", "campus", "city", "routing-comparison"];

/// The routing comparison's `--set`: every strategy (see simulations/routing-comparison.toml).
const ROUTING_COMPARISON: &str = "routing={ strategy = \"direct\" },{ strategy = \"relays\" },\
{ strategy = \"flooding\" },{ strategy = \"spray_and_wait\", copies = 8 }";

fn main() {
    // Paths in outputs (sweep.json names the scenario) are relative to the repository.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if let Err(e) = std::env::set_current_dir(&root) {
        eprintln!("reference: {e}");
        std::process::exit(1);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> = if args.is_empty() {
        ALL.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    let tmp = std::env::temp_dir().join(format!("sim-reference-{}", std::process::id()));
    let mut code = 0;
    for name in names {
        let scenario = format!("simulations/{name}.toml");
        let out = Path::new("simulations/reference").join(name);
        eprintln!("reference: {name}");
        let result = match name {
            "lan-party" | "campus" | "city" => Scenario::from_toml_file(Path::new(&scenario))
                .and_then(|sc| run(&sc, sc.seed, &tmp.join(name), &mut |_| {}))
                .and_then(|_| copy(&tmp.join(name), &out, &["summary.json"])),
            // The four strategies of issue 7; the whole `routing` table is set so that
            // spray-and-wait gets its copies (a key the other strategies refuse).
            "routing-comparison" => sweep::parse_set(ROUTING_COMPARISON)
                .and_then(|set| {
                    sweep::sweep(
                        Path::new(&scenario),
                        sweep::parse_seeds("1..5")?,
                        &[set],
                        &tmp.join(name),
                        &mut |_| {},
                    )
                })
                .and_then(|_| copy(&tmp.join(name), &out, &["sweep.json", "sweep.csv"])),
            other => {
                eprintln!("reference: unknown scenario {other} (one of {ALL:?})");
                std::process::exit(2);
            }
        };
        if let Err(e) = result {
            eprintln!("reference: {name}: {e}");
            code = 1;
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    std::process::exit(code);
}

fn copy(from: &Path, to: &Path, files: &[&str]) -> Result<(), instaconnect_sim::SimError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| instaconnect_sim::SimError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(to).map_err(io("create", to))?;
    for f in files {
        std::fs::copy(from.join(f), to.join(f)).map_err(io("copy", &to.join(f)))?;
    }
    Ok(())
}
