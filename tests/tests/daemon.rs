//! The node (`instaconnect run`) and its control API: while it runs, every command goes
//! through it with the same results as a direct run; the API wants its token; SIGTERM stops it
//! cleanly, SIGKILL leaves a control file the CLI gets past; bad flags and config keys exit 2;
//! the event stream reports changes.

use std::process::Output;

use instaconnect_e2e::{png, Home};
use serde_json::{json, Value};

const VCF: &str = "BEGIN:VCARD\r
VERSION:3.0\r
FN:Ravi Kumar\r
TEL;TYPE=CELL:+91 98123 40001\r
END:VCARD\r
BEGIN:VCARD\r
VERSION:4.0\r
FN:Meera Iyer\r
TEL;VALUE=uri;TYPE=cell:tel:+91-98123-40002\r
END:VCARD\r
BEGIN:VCARD\r
VERSION:3.0\r
FN:No Number\r
END:VCARD\r
";

fn created() -> Home {
    let h = Home::new();
    h.ok(&[
        "account",
        "create",
        "--phone",
        "+919812345678",
        "--name",
        "Asha",
    ]);
    h
}

/// Runs a command with the home's temporary dir as working directory, so relative file names
/// (`me.png`) mean the same in every home.
fn run_in(h: &Home, args: &[&str]) -> Output {
    h.cmd()
        .current_dir(h.path())
        .args(args)
        .output()
        .expect("run instaconnect")
}

/// Exit code, stdout and stderr, with the home's own paths made generic (and JSON output
/// without timestamps and ids, see [`normalize`]).
fn outcome(h: &Home, o: &Output) -> (Option<i32>, String, String) {
    let here = h.path().to_string_lossy().into_owned();
    let clean = |b: &[u8]| String::from_utf8_lossy(b).replace(&here, "<home>");
    let stdout = match serde_json::from_slice::<Value>(&o.stdout) {
        Ok(mut v) => {
            normalize(&mut v);
            format!("JSON {v}")
        }
        Err(_) => clean(&o.stdout),
    };
    (o.status.code(), stdout, clean(&o.stderr))
}

/// Drops what differs between two accounts that went through the same commands: timestamps,
/// random group ids and the account's own keys.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| {
                !k.ends_with("_ms")
                    && !["id", "peer_id", "identity_key", "fingerprint"].contains(&k.as_str())
            });
            m.values_mut().for_each(normalize);
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn json_of(o: &Output) -> Value {
    let mut v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)));
    normalize(&mut v);
    v
}

fn contacts(h: &Home) -> Vec<(String, Option<String>)> {
    h.contacts()
}

#[test]
fn every_command_works_through_the_running_node_as_it_does_directly() {
    let direct = created();
    let via = created();
    for h in [&direct, &via] {
        std::fs::write(h.file("book.vcf"), VCF).unwrap();
        std::fs::write(h.file("me.png"), png(120, 80)).unwrap();
        std::fs::write(h.file("note.png"), b"not a picture").unwrap();
    }
    let node = via.start_node();
    assert!(
        node.peer_id.starts_with("12D3KooW"),
        "peer id: {}",
        node.peer_id
    );
    assert_eq!(
        node.peer_id,
        via.json(&["account", "show"])["peer_id"],
        "the node prints the account's peer id"
    );

    // Same command, same exit code and output, byte for byte (paths made generic).
    let same = |args: &[&str]| {
        let d = run_in(&direct, args);
        let n = run_in(&via, args);
        assert_eq!(
            outcome(&direct, &d),
            outcome(&via, &n),
            "`{}` differs between a direct run and the node",
            args.join(" ")
        );
        n
    };
    same(&["contacts", "add", "+919812340009", "--name", "Kiran"]);
    same(&["contacts", "import", "book.vcf"]);
    same(&["contacts", "import", "book.vcf", "--json"]);
    same(&[
        "profile",
        "set",
        "--status",
        "At the library",
        "--picture",
        "me.png",
    ]);
    same(&["profile", "show", "--json"]);
    same(&["block", "Kiran"]);
    same(&["privacy", "set", "status", "contacts"]);
    same(&["contacts", "list"]);
    same(&["contacts", "list", "--json"]);
    same(&["privacy", "show"]);
    same(&["--region", "IN", "contacts", "add", "098123 40003"]);
    // Errors too: bad input (exit 2), missing files, a failure (exit 1), parser errors.
    same(&["contacts", "add", "12345"]);
    same(&["contacts", "import", "nowhere.vcf"]);
    same(&["profile", "set", "--picture", "note.png"]);
    same(&["groups", "create", "Ghosts", "--members", "Nobody"]);
    same(&["contacts", "safety", "Kiran"]);
    same(&["contacts", "frobnicate"]);
    same(&["groups", "list"]);
    same(&["export", "--out", "export.json"]);
    same(&[
        "account",
        "create",
        "--phone",
        "+919800000000",
        "--name",
        "Other",
    ]);
    same(&["account", "create", "--phone", "12345", "--name", "Other"]);

    // Group ids are random: compare the JSON without them.
    let args = [
        "groups",
        "create",
        "Book club",
        "--members",
        "Meera Iyer,+919812340001",
        "--json",
    ];
    let (d, n) = (run_in(&direct, &args), run_in(&via, &args));
    assert!(n.status.success(), "{}", String::from_utf8_lossy(&n.stderr));
    assert_eq!(json_of(&d), json_of(&n));
    let (d, n) = (
        run_in(&direct, &["groups", "list", "--json"]),
        run_in(&via, &["groups", "list", "--json"]),
    );
    assert_eq!(json_of(&d), json_of(&n));

    // The export the node wrote (relative to the client's directory) is private and complete.
    let (d, n) = (
        run_in(&direct, &["export", "--out", "export.json"]),
        run_in(&via, &["export", "--out", "export.json"]),
    );
    assert_eq!(outcome(&direct, &d), outcome(&via, &n));
    assert!(n.status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(via.file("export.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the export is readable only by its owner"
        );
    }
    let read = |h: &Home| {
        let mut v: Value =
            serde_json::from_slice(&std::fs::read(h.file("export.json")).unwrap()).unwrap();
        normalize(&mut v);
        v
    };
    let exported = read(&via);
    assert_eq!(read(&direct), exported);
    assert_eq!(exported["contacts"].as_array().unwrap().len(), 4);
    assert_eq!(exported["profile"]["picture"]["width"], 120);
    assert_eq!(exported["groups"][0]["name"], "Book club");

    // Those commands really went through the node: it logged them (by name, no values) and
    // it holds the database, so a second node cannot start.
    let log = node.log();
    for c in ["contacts import", "profile set", "groups create", "export"] {
        assert!(
            log.contains(&format!("command=\"{c}\"")),
            "{c} not in the log:\n{log}"
        );
    }
    assert!(
        !log.contains("+919812340009") && !log.contains("Kiran"),
        "the log holds no numbers or names:\n{log}"
    );
    let (code, err) = via.fail(&["run", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in use by another process"), "{err}");
    assert!(via.ok(&["contacts", "list"]).contains("Kiran"));
}

#[test]
fn the_control_api_wants_its_token_and_refuses_everything_else() {
    let h = created();
    let node = h.start_node();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(node.control_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "control.json is readable only by its owner"
        );
    }
    let token = node.token();
    assert_eq!(token.len(), 64, "256 bits in hex: {token}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    let before = h.state();

    let add = json!({"args": ["contacts", "add", "+919812340005", "--name", "Eve"]}).to_string();
    let mut flipped = token.clone().into_bytes();
    flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
    let flipped = format!("Bearer {}", String::from_utf8(flipped).unwrap());
    let shorter = format!("Bearer {}", &token[..63]);
    let basic = format!("Basic {token}");
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer wrong"),
        Some(flipped.as_str()),
        Some(shorter.as_str()),
        Some(basic.as_str()),
    ] {
        let a = node.post("/v1/command", auth, &add);
        assert_eq!(a.status, 401, "{auth:?}: {:?}", a.json);
        assert!(
            a.json["error"].as_str().unwrap().contains("token"),
            "{:?}",
            a.json
        );
        assert_eq!(node.get("/v1/health", auth).status, 401, "{auth:?}");
        assert_eq!(node.get("/v1/nowhere", auth).status, 401, "{auth:?}");
    }
    assert_eq!(h.state(), before, "refused requests changed nothing");

    let bearer = format!("Bearer {token}");
    let health = node.get("/v1/health", Some(&bearer));
    assert_eq!(health.status, 200);
    assert_eq!(health.json["peer_id"], node.peer_id.as_str());
    assert_eq!(health.json["version"], env!("CARGO_PKG_VERSION"));

    // Malformed or oversized requests get a JSON error and change nothing.
    let a = node.post("/v1/command", Some(&bearer), "{\"args\": \"contacts\"}");
    assert!(a.status == 400 || a.status == 422, "{a:?}");
    assert!(a.json["error"].is_string(), "{a:?}");
    let huge = json!({"args": ["contacts", "add", "+919812340006", "--name", "x".repeat(100_000)]});
    let a = node.post("/v1/command", Some(&bearer), &huge.to_string());
    assert_eq!(a.status, 413, "{a:?}");
    let a = node.command(&["--home", "/elsewhere", "contacts", "list"]);
    assert_eq!(a.json["code"], 2, "{a:?}");
    assert!(
        a.json["stderr"].as_str().unwrap().contains("--home"),
        "{a:?}"
    );
    let a = node.command(&["run"]);
    assert_eq!(a.json["code"], 2, "{a:?}");
    // Without the client's working directory, a relative path cannot be meant.
    let a = node.command(&["contacts", "import", "book.vcf"]);
    assert_eq!(a.json["code"], 2, "{a:?}");
    assert!(
        a.json["stderr"].as_str().unwrap().contains("relative path"),
        "{a:?}"
    );
    assert_eq!(node.get("/v1/nowhere", Some(&bearer)).status, 404);
    assert_eq!(node.post("/v1/health", Some(&bearer), "{}").status, 405);
    assert_eq!(h.state(), before);

    // With the token, the same command works.
    let a = node.post("/v1/command", Some(&bearer), &add);
    assert_eq!(a.status, 200);
    assert_eq!(a.json["code"], 0, "{a:?}");
    assert_eq!(a.json["stdout"], "added +919812340005 (Eve)\n");
    assert_eq!(a.json["stderr"], "");
}

#[test]
fn sigterm_stops_the_node_cleanly_and_the_data_stays() {
    let h = created();
    let node = h.start_node();
    h.ok(&["contacts", "add", "+919812340001", "--name", "Ravi"]);
    h.ok(&["groups", "create", "Trip", "--members", "Ravi"]);
    let state = h.state();
    // An open event stream does not hold up the shutdown.
    let _events = node.events();
    let control = node.control_path().to_path_buf();
    assert!(control.exists());

    let exited = node.signal("TERM");
    assert_eq!(exited.status.code(), Some(0), "{exited:?}");
    assert!(
        exited.stdout.iter().all(|l| l.starts_with("peer id: ")
            || l.starts_with("control api: ")
            || l.starts_with("listening on ")),
        "only the start lines (peer id, control API, addresses): {exited:?}"
    );
    for alarming in ["ERROR", "WARN", "panic", "error"] {
        assert!(
            !exited.log.contains(alarming),
            "{alarming:?} in the log:\n{}",
            exited.log
        );
    }
    assert!(!control.exists(), "the control file is removed");

    // Afterwards the CLI opens the database itself; nothing was lost.
    assert_eq!(h.state(), state);
    assert_eq!(
        contacts(&h),
        vec![("+919812340001".to_string(), Some("Ravi".to_string()))]
    );
    h.ok(&["contacts", "add", "+919812340002", "--name", "Meera"]);
    assert_eq!(contacts(&h).len(), 2);
}

#[test]
fn after_sigkill_the_stale_control_file_is_ignored_and_removed() {
    let h = created();
    let node = h.start_node();
    h.ok(&["contacts", "add", "+919812340001", "--name", "Ravi"]);
    let control = node.control_path().to_path_buf();
    node.kill9();
    assert!(control.exists(), "SIGKILL leaves the control file behind");

    assert_eq!(
        contacts(&h),
        vec![("+919812340001".to_string(), Some("Ravi".to_string()))]
    );
    assert!(!control.exists(), "the stale control file was removed");
    h.ok(&["contacts", "add", "+919812340002", "--name", "Meera"]);

    // A new node starts over the stale state and serves commands again.
    let node = h.start_node();
    assert_eq!(contacts(&h).len(), 2);
    let (code, err) = h.fail(&["contacts", "remove", "Nobody"]);
    assert_eq!(code, 2, "{err}");
    drop(node);
}

#[test]
fn bad_listen_addresses_and_unknown_config_keys_exit_2_with_a_clear_message() {
    let h = created();
    let check = |args: &[&str], needles: &[&str]| {
        let out = h.cmd().arg("run").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "`run {}`: {err}",
            args.join(" ")
        );
        for n in needles {
            assert!(
                err.contains(n),
                "`run {}`: expected {n:?} in {err:?}",
                args.join(" ")
            );
        }
        assert!(out.stdout.is_empty(), "nothing started");
        assert!(!h.data_dir().join("control.json").exists());
    };
    check(
        &["--no-mdns", "--listen", "localhost:4001"],
        &[
            "invalid multiaddr \"localhost:4001\" (--listen)",
            "starts with /",
        ],
    );
    check(
        &["--listen", "/ip4/127.0.0.1/tcp/70000"],
        &["\"70000\" is not a port"],
    );
    check(&["--peer", "/ip4/1.2.3/tcp/1"], &["(--peer)", "IPv4"]);

    let config = h.file("device.toml");
    std::fs::write(
        &config,
        "[network]\nmdns = false\nlisten_on = [\"/ip4/0.0.0.0/tcp/0\"]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    check(
        &["--config", config],
        &[
            "invalid config file",
            "device.toml",
            "unknown field `listen_on`",
        ],
    );
    std::fs::write(
        h.file("device.toml"),
        "[network]\nlisten = [\"tcp:4001\"]\n",
    )
    .unwrap();
    check(&["--config", config], &["network.listen in", "device.toml"]);
    std::fs::write(h.file("device.toml"), "verbose = true\n").unwrap();
    check(&["--config", config], &["unknown field `verbose`"]);
    check(
        &["--config", h.file("missing.toml").to_str().unwrap()],
        &["cannot read config file"],
    );

    // The shipped, documented config is valid as it is.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/device.toml");
    let node = h.start_node_with(&["--config", shipped]);
    assert!(node.url.starts_with("http://127.0.0.1:"), "{}", node.url);

    // Without an account there is nothing to run.
    let empty = Home::new();
    let (code, err) = empty.fail(&["run", "--no-mdns"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no account"), "{err}");
}

#[test]
fn the_event_stream_reports_commands_that_change_state() {
    let h = created();
    let node = h.start_node();
    let events = node.events();

    // A read-only command publishes nothing; the change after it is the first event.
    assert_eq!(node.command(&["contacts", "list"]).json["code"], 0);
    let (code, _) = h.fail(&["contacts", "add", "12345"]);
    assert_eq!(code, 2);
    let a = node.command(&["contacts", "add", "+919812340001", "--name", "Ravi"]);
    assert_eq!(a.json["code"], 0, "{a:?}");
    let (name, data) = events.next();
    assert_eq!(name, "command");
    assert_eq!(
        data,
        json!({"type": "command", "args": ["contacts", "add", "+919812340001", "--name", "Ravi"]})
    );

    // Commands from the CLI go through the node and show up too.
    h.ok(&["groups", "create", "Trip", "--members", "Ravi"]);
    let (name, data) = events.next();
    assert_eq!(name, "command");
    assert_eq!(
        data["args"],
        json!(["groups", "create", "Trip", "--members", "Ravi"])
    );
}
