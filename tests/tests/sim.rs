//! `instaconnect sim run` end to end: the same scenario and seed give byte-identical outputs,
//! another seed gives other results, and a bad scenario is a clear usage error.

use instaconnect_e2e::Home;

const SCENARIO: &str = r#"
seed = 11
duration = "10m"

[nodes]
devices = 8

[mobility]
kind = "static_grid"
area = [10.0, 10.0]

[radio]
range = 50.0

[link]
latency = "2ms"
bandwidth = "10Mbps"
loss = 0.05

[workload]
rate_per_hour = 30.0
contacts = 3
size = { kind = "uniform", min = 20, max = 200 }
"#;

#[test]
fn a_seeded_simulation_replays_byte_for_byte_and_reports_its_results() {
    let h = Home::new();
    let scenario = h.file("room.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let run = |seed: &str, out: &str| {
        let dir = h.file(out);
        let s = h.json(&[
            "sim",
            "run",
            scenario.to_str().unwrap(),
            "--seed",
            seed,
            "--out",
            dir.to_str().unwrap(),
        ]);
        (s, dir)
    };
    let (first, a) = run("5", "a");
    let (_, b) = run("5", "b");
    let (other, c) = run("6", "c");
    for f in [
        "summary.json",
        "messages.csv",
        "delivery.svg",
        "latency_cdf.svg",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} replays exactly"
        );
    }
    assert_ne!(
        std::fs::read(a.join("messages.csv")).unwrap(),
        std::fs::read(c.join("messages.csv")).unwrap(),
        "another seed, another run"
    );
    assert_eq!(first["seed"], 5);
    assert_eq!(other["seed"], 6);
    assert_eq!(first["devices"], 8);
    let created = first["created"].as_u64().unwrap();
    assert!(created > 0);
    // Everyone is in range and loss is retried: everything arrives.
    assert_eq!(first["delivered"].as_u64().unwrap(), created);
    let csv = std::fs::read_to_string(a.join("messages.csv")).unwrap();
    assert_eq!(
        csv.lines().count() as u64,
        created + 1,
        "a header and a line per message"
    );

    let bad = h.file("bad.toml");
    std::fs::write(&bad, "seed = 1\nduraton = \"1h\"\n").unwrap();
    let (code, err) = h.fail(&["sim", "run", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("duraton"), "{err}");
}

#[test]
fn a_sweep_runs_every_seed_and_value_and_aggregates_with_confidence_intervals() {
    let h = Home::new();
    let scenario = h.file("room.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let sweep = |out: &str| {
        let dir = h.file(out);
        let report = h.json(&[
            "sim",
            "sweep",
            scenario.to_str().unwrap(),
            "--seeds",
            "1..3",
            "--set",
            "workload.rate_per_hour=10,40",
            "--out",
            dir.to_str().unwrap(),
        ]);
        (report, dir)
    };
    let (report, dir) = sweep("s1");
    let combos = report["combinations"].as_array().unwrap();
    assert_eq!(combos.len(), 2, "one combination per value");
    assert_eq!(report["parameters"][0], "workload.rate_per_hour");
    let created = |c: &serde_json::Value| c["metrics"]["created"].clone();
    for (c, rate) in combos.iter().zip(["10", "40"]) {
        assert_eq!(c["parameters"]["workload.rate_per_hour"], rate);
        assert_eq!(c["runs"], 3);
        let m = created(c);
        assert_eq!(m["n"], 3);
        let (lo, mean, hi) = (
            m["ci95_low"].as_f64().unwrap(),
            m["mean"].as_f64().unwrap(),
            m["ci95_high"].as_f64().unwrap(),
        );
        assert!(lo <= mean && mean <= hi && hi > lo, "{m}");
        // Every seed's run is there and its summary feeds the mean.
        let mut sum = 0.0;
        for seed in 1..=3 {
            let run_dir = dir
                .join(c["dir"].as_str().unwrap())
                .join(format!("seed-{seed}"));
            let s: serde_json::Value =
                serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap())
                    .unwrap();
            assert_eq!(s["seed"], seed);
            sum += s["created"].as_f64().unwrap();
        }
        assert!((sum / 3.0 - mean).abs() < 1e-9);
        // Everyone is in range: every seed delivers everything, so the interval has no width.
        let p = &c["metrics"]["delivery_probability"];
        assert_eq!(
            (p["mean"].as_f64(), p["ci95_low"].as_f64()),
            (Some(1.0), Some(1.0))
        );
    }
    assert!(
        created(&combos[1])["mean"].as_f64() > created(&combos[0])["mean"].as_f64(),
        "four times the rate creates more texts"
    );
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    assert!(csv.starts_with("workload.rate_per_hour,metric,n,mean,sd,ci95_low,ci95_high\n"));
    assert!(
        csv.lines()
            .any(|l| l.starts_with("40,delivery_probability,3,1,0,1,1")),
        "{csv}"
    );

    // The same sweep again: byte-identical files.
    let (_, again) = sweep("s2");
    for f in ["sweep.json", "sweep.csv"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f} replays exactly"
        );
    }

    // Bad input is a usage error naming what is wrong.
    let s = scenario.to_str().unwrap();
    for (args, expect) in [
        (vec!["--seeds", "5..2"], "5..2"),
        (vec!["--seeds", "x..3"], "`x` is not a seed"),
        (
            vec!["--seeds", "1..2", "--set", "workload.rate=5"],
            "workload.rate",
        ),
        (
            vec!["--seeds", "1..2", "--set", "link.loss=0.1,2"],
            "link.loss",
        ),
    ] {
        let mut full = vec!["sim", "sweep", s];
        full.extend(args);
        let (code, err) = h.fail(&full);
        assert_eq!(code, 2, "{full:?}: {err}");
        assert!(err.contains(expect), "{full:?}: {err}");
    }
}
