//! The simulator end to end: determinism, delivery on a LAN, partitions, crashes, traces,
//! scenario errors, and agreement with theory for random pairwise meetings.

use std::path::Path;

use instaconnect_sim::{run, simulate, MessageRow, Report, Scenario, SimError};

fn scenario(toml: &str) -> Scenario {
    Scenario::from_toml_str(toml, Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
}

fn sim(sc: &Scenario, seed: u64) -> Report {
    simulate(sc, seed, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"))
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// A small mesh that exercises every moving part: walking devices, loss, churn.
const BUSY: &str = r#"
duration = "20m"
[nodes]
devices = 12
[mobility]
kind = "random_waypoint"
area = [120.0, 120.0]
speed = [0.5, 2.0]
pause = ["0s", "1m"]
[radio]
range = 35.0
[link]
latency = "20ms"
bandwidth = "2Mbps"
loss = 0.05
[churn]
mean_up = "8m"
mean_down = "2m"
[workload]
rate_per_hour = 30.0
contacts = 4
size = { kind = "uniform", min = 1, max = 3000 }
"#;

#[test]
fn the_same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let sc = scenario(BUSY);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut calls = 0;
    let s1 = run(&sc, 7, dirs[0].path(), &mut |f| {
        assert!((0.0..=1.0).contains(&f));
        calls += 1;
    })
    .unwrap();
    assert!(calls > 1, "progress is reported");
    let s2 = run(&sc, 7, dirs[1].path(), &mut |_| {}).unwrap();
    let s3 = run(&sc, 8, dirs[2].path(), &mut |_| {}).unwrap();
    assert_eq!(s3.seed, 8);
    assert!(s1.created > 20, "the workload ran: {s1:?}");
    assert!(
        s1.frames_lost > 0 && s1.link_ups > 0,
        "loss and mobility acted: {s1:?}"
    );
    for f in [
        "summary.json",
        "messages.csv",
        "delivery.svg",
        "latency_cdf.svg",
    ] {
        assert_eq!(
            read(dirs[0].path(), f),
            read(dirs[1].path(), f),
            "{f} differs between two runs of seed 7"
        );
    }
    assert_eq!(s1, s2);
    assert_ne!(
        read(dirs[0].path(), "summary.json"),
        read(dirs[2].path(), "summary.json")
    );
    assert_ne!(
        read(dirs[0].path(), "messages.csv"),
        read(dirs[2].path(), "messages.csv")
    );
    let svg = String::from_utf8(read(dirs[0].path(), "delivery.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("delivered"));
    let csv = String::from_utf8(read(dirs[0].path(), "messages.csv")).unwrap();
    assert_eq!(csv.lines().count() as u64, s1.created + 1);
    let json: serde_json::Value =
        serde_json::from_slice(&read(dirs[0].path(), "summary.json")).unwrap();
    assert_eq!(json["seed"], 7);
    assert_eq!(json["crypto"], true);
    assert_eq!(json["scenario_hash"].as_str().unwrap().len(), 64);
}

const LAN: &str = r#"
duration = "10m"
[nodes]
devices = 10
[mobility]
kind = "static_grid"
area = [8.0, 8.0]
[radio]
range = 20.0
[link]
latency = "2ms"
[workload]
rate_per_hour = 60.0
contacts = 3
"#;

#[test]
fn on_a_lan_where_everyone_is_in_range_everything_is_delivered_at_once() {
    let r = sim(&scenario(LAN), 1);
    let s = &r.summary;
    assert!(s.created >= 50, "{s:?}");
    assert_eq!(s.delivered, s.created, "{s:?}");
    assert_eq!(s.acknowledged, s.created);
    assert_eq!(s.delivery_probability, Some(1.0));
    assert_eq!(s.duplicates, 0);
    assert_eq!(s.mean_hop_count, Some(1.0));
    assert_eq!(s.engine_problems, 0);
    // One frame each way, each 2 ms away plus a few microseconds on the wire.
    let lat = s.latency_ms.as_ref().unwrap();
    assert!(lat.max <= 10, "{lat:?}");
    // Each text is one request and one response.
    assert!(s.overhead_ratio.unwrap() >= 2.0);
    // 10 devices all in range: 45 links, up at time 0.
    assert_eq!(s.link_ups, 45);
}

#[test]
fn the_shipped_lan_party_scenario_loads_and_delivers_everything() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../simulations/lan-party.toml");
    let mut sc = Scenario::from_toml_file(&path).unwrap();
    assert_eq!(sc.nodes.devices, 50);
    // A shorter run of the same room keeps the test quick.
    sc.duration = instaconnect_sim::units::Millis(5 * 60_000);
    let s = sim(&sc, sc.seed).summary;
    assert!(s.created > 10);
    assert_eq!(s.delivered, s.created, "{s:?}");
    assert_eq!(s.link_ups, 50 * 49 / 2);
}

/// The LAN party as shipped, run in full, gives exactly its checked-in reference summary. A
/// change to the engine or the simulator that moves any number fails here; if the change is
/// intended, regenerate the references with `scripts/sim-reference` and commit them with it.
#[test]
fn the_lan_party_matches_its_reference_summary_byte_for_byte() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sc = Scenario::from_toml_file(&root.join("simulations/lan-party.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let summary = run(&sc, sc.seed, dir.path(), &mut |_| {}).unwrap();
    assert_eq!(summary.delivered, summary.created, "{summary:?}");
    let got = String::from_utf8(read(dir.path(), "summary.json")).unwrap();
    let want = std::fs::read_to_string(root.join("simulations/reference/lan-party/summary.json"))
        .expect("simulations/reference/lan-party/summary.json (scripts/sim-reference makes it)");
    assert!(
        got == want,
        "the LAN party's summary.json differs from simulations/reference/lan-party/summary.json; \
         if the change is intended, run scripts/sim-reference and commit the result.\n\
         got:\n{got}\nwant:\n{want}"
    );
}

fn cross(m: &MessageRow, groups: u32, devices: u32) -> bool {
    m.from * groups / devices != m.to * groups / devices
}

#[test]
fn a_partition_holds_cross_messages_until_it_heals() {
    let base = r#"
duration = "30m"
[nodes]
devices = 6
[mobility]
kind = "static_grid"
area = [5.0, 5.0]
[radio]
range = 50.0
[workload]
rate_per_hour = 60.0
contacts = 5
stop = "20m"
"#;
    let split =
        format!("{base}\n[[faults.partitions]]\nstart = \"5m\"\nend = \"15m\"\ngroups = 2\n");
    let (start, end) = (5 * 60_000, 15 * 60_000);
    let healed = sim(&scenario(&split), 3);
    let whole = sim(&scenario(base), 3);
    for r in [&healed, &whole] {
        assert_eq!(r.summary.delivered, r.summary.created, "{:?}", r.summary);
    }
    let held: Vec<&MessageRow> = healed
        .messages
        .iter()
        .filter(|m| cross(m, 2, 6) && (start..end).contains(&m.created_ms))
        .collect();
    assert!(held.len() >= 5, "some messages cross the partition");
    for m in &held {
        assert!(
            m.delivered_ms.unwrap() >= end,
            "crossed the partition early: {m:?}"
        );
    }
    for m in healed.messages.iter().filter(|m| !held.contains(m)) {
        assert!(m.latency_ms.unwrap() < 1_000, "not held back: {m:?}");
    }
    // Without the partition the same kind of message goes at once.
    assert!(whole.messages.iter().all(|m| m.latency_ms.unwrap() < 1_000));
    let worst = |r: &Report| r.summary.latency_ms.as_ref().unwrap().max;
    assert!(worst(&healed) > 60_000 && worst(&whole) < 1_000);
}

#[test]
fn crashes_with_restart_lose_nothing_and_deliver_exactly_once() {
    // Slow links keep frames in flight, so the crashes cut requests and acks mid-way.
    let sc = scenario(
        r#"
duration = "20m"
[nodes]
devices = 4
[mobility]
kind = "static_grid"
area = [5.0, 5.0]
[radio]
range = 50.0
[link]
latency = "400ms"
bandwidth = "64kbps"
[workload]
rate_per_hour = 1500.0
contacts = 3
stop = "12m"
[[faults.crashes]]
node = 1
at = "2m"
restart_after = "30s"
[[faults.crashes]]
node = 1
at = "5m"
restart_after = "10s"
[[faults.crashes]]
node = 2
at = "5m"
restart_after = "1m"
[[faults.crashes]]
node = 1
at = "9m"
restart_after = "45s"
"#,
    );
    let s = sim(&sc, 11).summary;
    assert_eq!(s.restarts, 4);
    assert!(
        s.requests_failed > 0,
        "crashes cut requests in flight: {s:?}"
    );
    assert!(s.created > 1000);
    assert_eq!(s.delivered, s.created, "{s:?}");
    assert_eq!(s.acknowledged, s.created, "{s:?}");
    assert_eq!(s.duplicates, 0);
}

#[test]
fn a_trace_links_devices_only_while_it_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("meet.txt"),
        "# The ONE connection events\n60 CONN 0 1 up\n120 CONN 0 1 down\n300 CONN 1 0 up\n360.5 CONN 0 1 down\n",
    )
    .unwrap();
    let toml = r#"
duration = "10m"
[nodes]
devices = 2
[mobility]
kind = "trace"
file = "meet.txt"
[workload]
rate_per_hour = 120.0
contacts = 1
"#;
    let sc = Scenario::from_toml_str(toml, dir.path()).unwrap();
    let r = sim(&sc, 5);
    let windows = [(60_000, 120_000), (300_000, 360_500)];
    let mut delivered = 0;
    for m in &r.messages {
        match m.delivered_ms {
            Some(d) => {
                delivered += 1;
                assert!(
                    windows.iter().any(|&(a, b)| (a..=b).contains(&d)),
                    "delivered outside a contact: {m:?}"
                );
                // Created before or during the window it was delivered in.
                let (a, _) = windows
                    .iter()
                    .find(|&&(a, b)| (a..=b).contains(&d))
                    .unwrap();
                if m.created_ms < *a {
                    assert!(d - a < 1_000, "queued messages go when the link comes up");
                }
            }
            None => assert!(m.created_ms > 360_000, "only late messages wait: {m:?}"),
        }
    }
    assert!(delivered > 5 && r.summary.link_ups == 2);
}

fn err(toml: &str) -> String {
    match Scenario::from_toml_str(toml, Path::new("/nonexistent")) {
        Ok(_) => panic!("accepted: {toml}"),
        Err(e) => e.to_string(),
    }
}

const MIN: &str = "duration = \"1h\"\n[nodes]\ndevices = 3\n[mobility]\nkind = \"static_grid\"\narea = [1.0, 1.0]\n";

#[test]
fn bad_scenarios_are_refused_with_the_key_and_the_reason() {
    assert!(Scenario::from_toml_str(MIN, Path::new(".")).is_ok());
    let cases: &[(String, &[&str])] = &[
        (
            format!("{MIN}[link]\nlatncy = \"5ms\"\n"),
            &[
                "`link.latncy`",
                "line 8, column 1: unknown field `latncy`, expected one of",
            ],
        ),
        (
            format!("{MIN}[link]\nlatency = \"5 parsecs\"\n"),
            &["`link.latency`", "expected a duration"],
        ),
        (
            format!("{MIN}[link]\nloss = 1.5\n"),
            &["`link.loss`", "[0, 1)"],
        ),
        (
            format!("{MIN}[link]\nbandwidth = 10\n"),
            &["`link.bandwidth`", "bandwidth"],
        ),
        (
            format!("{MIN}[routing]\nstrategy = \"relays\"\n"),
            &["`nodes.relays`", "at least one relay"],
        ),
        (
            format!("{MIN}[routing]\nstrategy = \"spray_and_wait\"\n"),
            &["`routing.copies`", "needs the number of copies"],
        ),
        (
            format!("{MIN}[routing]\nstrategy = \"flooding\"\ncopies = 4\n"),
            &["`routing.copies`", "only to strategy \"spray_and_wait\""],
        ),
        (
            format!("{MIN}[buffers]\ncarry_bytes = 10\n"),
            &["`buffers.carry_bytes`", "largest envelope"],
        ),
        (
            format!("{MIN}[routing]\nstrategy = \"teleport\"\n"),
            &["`routing.strategy`", "teleport"],
        ),
        (
            format!("{MIN}[[faults.crashes]]\nnode = 3\nat = \"1m\"\n"),
            &["`faults.crashes[0].node`", "no device 3"],
        ),
        (
            format!("{MIN}[workload]\nsize = {{ kind = \"fixed\", bytes = 100000 }}\n"),
            &["`workload.size.bytes`"],
        ),
        (
            "duration = \"1h\"\n[nodes]\ndevices = 3\n".into(),
            &["mobility"],
        ),
        (
            "duration = \"1h\"\n[nodes]\ndevices = 3\n[mobility]\nkind = \"teleport\"\n".into(),
            &["`mobility.kind`", "unknown variant `teleport`"],
        ),
        ("duration = \"1h\"\n[nodes\n".into(), &["line 2"]),
        (
            format!("{MIN}[workload]\nstart = \"2h\"\n"),
            &["`workload.start`"],
        ),
    ];
    for (toml, needles) in cases {
        let e = err(toml);
        for n in *needles {
            assert!(e.contains(n), "error for\n{toml}\nlacks {n:?}: {e}");
        }
    }
}

#[test]
fn bad_traces_are_refused_with_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let with = |file: &str| {
        format!(
            "duration = \"1h\"\n[nodes]\ndevices = 3\n[mobility]\nkind = \"trace\"\nfile = \"{file}\"\n"
        )
    };
    match Scenario::from_toml_str(&with("missing.txt"), dir.path()) {
        Err(e @ SimError::Io { .. }) => assert!(e.to_string().contains("missing.txt"), "{e}"),
        other => panic!("{other:?}"),
    }
    std::fs::write(dir.path().join("bad.txt"), "1 CONN 0 1 up\n2 CONN 0 7 up\n").unwrap();
    match Scenario::from_toml_str(&with("bad.txt"), dir.path()) {
        Err(e @ SimError::Trace { line: 2, .. }) => {
            let e = e.to_string();
            assert!(e.contains("bad.txt:2") && e.contains("device 7"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// Theory check: random pairwise meetings and direct routing.
///
/// Each pair meets as a Poisson process of rate λ; a meeting keeps the pair linked for D
/// (overlapping meetings merge). A message created at an independent time t is delivered at
/// once (after a link latency ε) if a meeting covers t, which happens when a meeting started in
/// (t - D, t]: probability 1 - q with q = exp(-λD). Otherwise it waits for the next meeting
/// start, which by memorylessness is Exp(λ) after t, independent of the past. So the latency X
/// is 0 with probability 1 - q and Exp(λ) with probability q (plus ε):
///
///   E[X] = q/λ,  E[X²] = 2q/λ²,  Var X = (2q - q²)/λ².
///
/// With `pairing = "distinct"` every message uses its own pair, whose meetings are independent
/// of every other pair's, so the n latencies are independent: the sample mean has standard
/// error σ/√n and the share delivered at once has standard error √(q(1-q)/n). We assert both
/// within 4 standard errors (a false alarm once in about 16,000 seeds). Messages stop 15/λ
/// before the end, so one still waiting at the end has probability e^-15.
#[test]
fn random_meetings_deliver_with_the_latency_theory_predicts() {
    let lambda_per_hour: f64 = 60.0;
    let d_ms: f64 = 30_000.0;
    let sc = scenario(&format!(
        r#"
duration = "20m"
[nodes]
devices = 40
share_presence = false
[mobility]
kind = "random_meetings"
rate_per_hour = {lambda_per_hour}
meeting_duration = "{d_ms}ms"
[link]
latency = "1ms"
bandwidth = "1Gbps"
[workload]
rate_per_hour = 210.0
stop = "5m"
contacts = 39
pairing = "distinct"
"#
    ));
    let r = sim(&sc, 2024);
    let s = &r.summary;
    assert_eq!(s.delivered, s.created, "{s:?}");
    let n = s.created as f64;
    assert!(n >= 400.0, "enough samples: {n}");
    let lambda = lambda_per_hour / 3_600_000.0; // per ms
    let q = (-lambda * d_ms).exp();
    // ε: one link latency plus the frame's transmission, rounded up to whole milliseconds.
    let eps = 2.0;
    let expected_mean = q / lambda + eps;
    let sd = (2.0 * q - q * q).sqrt() / lambda;
    let mean = s.latency_ms.as_ref().unwrap().mean;
    let tol = 4.0 * sd / n.sqrt();
    eprintln!("mean latency {mean:.0} ms, theory {expected_mean:.0} ± {tol:.0} ms (n = {n})");
    assert!(
        (mean - expected_mean).abs() <= tol,
        "mean latency {mean:.0} ms, theory {expected_mean:.0} ± {tol:.0} ms (n = {n})"
    );
    let at_once = r
        .messages
        .iter()
        .filter(|m| m.latency_ms.unwrap() < 1_000)
        .count() as f64
        / n;
    let tol_share = 4.0 * (q * (1.0 - q) / n).sqrt();
    assert!(
        (at_once - (1.0 - q)).abs() <= tol_share,
        "share delivered at once {at_once:.3}, theory {:.3} ± {tol_share:.3}",
        1.0 - q
    );
}
