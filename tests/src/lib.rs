//! Helpers for end-to-end tests: run the real `instaconnect` binary in a temporary home.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub mod relay;

/// The `instaconnect` binary under test: `$INSTACONNECT_BIN`, else the one cargo builds next to
/// this test executable. Under `cargo test` it is (re)built once per test process, so a test
/// never runs a stale binary.
pub fn bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(locate_or_build).clone()
}

fn locate_or_build() -> PathBuf {
    if let Some(p) = std::env::var_os("INSTACONNECT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let release = exe.components().any(|c| c.as_os_str() == "release");
        let mut cmd = Command::new(cargo);
        // The same invocation as scripts/test, so the features resolve identically and this
        // is a no-op there (building `-p instaconnect` alone would unify features differently
        // and rebuild half the workspace).
        cmd.args(["build", "--quiet", "--workspace", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    }
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/instaconnect
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let p = dir.join(format!("instaconnect{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} does not exist: build it first with `cargo build -p instaconnect` (scripts/test does)",
        p.display()
    );
    p
}

/// A temporary data directory with helpers to run commands in it.
pub struct Home {
    dir: tempfile::TempDir,
    /// Run every command inside this network namespace (`ip netns exec`).
    netns: Option<String>,
}

impl Default for Home {
    fn default() -> Self {
        Self::new()
    }
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("temp dir"),
            netns: None,
        }
    }

    /// A home whose commands (and node) all run inside network namespace `ns`.
    pub fn in_netns(ns: &str) -> Home {
        Home {
            netns: Some(ns.to_string()),
            ..Home::new()
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file path inside the temporary dir (outside the data dir).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn cmd(&self) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        c.arg("--home").arg(self.data_dir());
        c.env_remove("INSTACONNECT_HOME");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run instaconnect")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`instaconnect {}` failed with {:?}\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs a command with `--json` that must succeed; returns the parsed output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
    }

    /// Runs a command that must fail; returns (exit code, stderr).
    pub fn fail(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "`instaconnect {}` should have failed\nstdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `contacts list` as (phone, name) pairs, in order.
    pub fn contacts(&self) -> Vec<(String, Option<String>)> {
        self.json(&["contacts", "list"])
            .as_array()
            .expect("array")
            .iter()
            .map(|c| {
                (
                    c["phone"].as_str().expect("phone").to_string(),
                    c["name"].as_str().map(str::to_string),
                )
            })
            .collect()
    }

    /// The account's export without its timestamp, for comparing state before and after.
    pub fn state(&self) -> Value {
        let mut v = self.json(&["export"]);
        if let Some(o) = v.as_object_mut() {
            o.remove("exported_at_ms");
        }
        v
    }
}

/// How long a node may take to start or stop, and an event to arrive, before a test fails.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(30);

impl Home {
    /// A new home with an account.
    pub fn with_account(phone: &str, name: &str) -> Home {
        let h = Home::new();
        h.ok(&["account", "create", "--phone", phone, "--name", name]);
        h
    }

    /// With both nodes running: this home links `their_phone` (saved as `name`) to their device
    /// `their_peer`, they accept the request from `my_phone`; waits for both sides to see it.
    #[allow(clippy::too_many_arguments)]
    pub fn link(
        &self,
        my_events: &Events,
        my_phone: &str,
        them: &Home,
        their_events: &Events,
        their_phone: &str,
        their_peer: &str,
        name: &str,
    ) {
        self.ok(&[
            "contacts",
            "add",
            their_phone,
            "--name",
            name,
            "--peer",
            their_peer,
        ]);
        their_events.wait("contact_request", |d| d["phone"] == my_phone);
        them.ok(&["contacts", "accept", my_phone]);
        my_events.wait("contact_accepted", |d| d["phone"] == their_phone);
    }
}

impl Home {
    /// Starts `instaconnect run --no-mdns` on 127.0.0.1 in this home and waits (with a
    /// timeout) until it prints its control API address. The node is killed when dropped.
    pub fn start_node(&self) -> Node {
        self.start_node_with(&[])
    }

    /// [`Home::start_node`] with extra arguments for `run`.
    pub fn start_node_with(&self, extra: &[&str]) -> Node {
        let mut args = vec!["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"];
        args.extend_from_slice(extra);
        self.spawn_node(&args)
    }

    /// Starts `instaconnect run ARGS` (nothing added) and waits for its control API line.
    pub fn spawn_node(&self, run_args: &[&str]) -> Node {
        let stderr_path = self.file(&format!("node-{}.log", unique()));
        let stderr = std::fs::File::create(&stderr_path).expect("create node log");
        let mut child = self
            .cmd()
            .arg("run")
            .args(run_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn instaconnect run");
        let lines = stdout_lines(&mut child);
        let mut node = Node {
            child,
            url: String::new(),
            peer_id: String::new(),
            lines,
            stdout: Vec::new(),
            stderr_path,
            control_path: self.data_dir().join("control.json"),
        };
        while node.url.is_empty() {
            match node.lines.recv_timeout(NODE_TIMEOUT) {
                Ok(Some(line)) => {
                    if let Some(id) = line.strip_prefix("peer id: ") {
                        node.peer_id = id.to_string();
                    } else if let Some(url) = line.strip_prefix("control api: ") {
                        node.url = url.to_string();
                    }
                    node.stdout.push(line);
                }
                Ok(None) | Err(_) => panic!(
                    "the node did not print its control API address\nstdout: {:?}\nlog: {}",
                    node.stdout,
                    node.log()
                ),
            }
        }
        node
    }
}

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A running `instaconnect run`; killed (SIGKILL) when dropped.
pub struct Node {
    child: Child,
    /// `http://127.0.0.1:PORT`, as the node printed it.
    pub url: String,
    /// The peer id the node printed.
    pub peer_id: String,
    lines: mpsc::Receiver<Option<String>>,
    /// Standard output lines read so far.
    pub stdout: Vec<String>,
    stderr_path: PathBuf,
    control_path: PathBuf,
}

/// How a node ended: exit status, all of its standard output and its log (stderr).
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub log: String,
}

/// An HTTP answer from the control API.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's log so far (its standard error).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `<home>/control.json`.
    pub fn control_path(&self) -> &Path {
        &self.control_path
    }

    /// Waits (with a timeout) for a standard output line starting with `prefix`; returns the
    /// rest of that line.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        if let Some(l) = self.stdout.iter().find_map(|l| l.strip_prefix(prefix)) {
            return l.to_string();
        }
        loop {
            match self.lines.recv_timeout(NODE_TIMEOUT) {
                Ok(Some(line)) => {
                    self.stdout.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "the node never printed a line starting with {prefix:?}\nstdout: {:?}\nlog: {}",
                    self.stdout,
                    self.log()
                ),
            }
        }
    }

    /// The bearer token from the control file.
    pub fn token(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.control_path).expect("read control.json"))
                .expect("control.json is JSON");
        v["token"].as_str().expect("token").to_string()
    }

    /// Sends a signal with the `kill` command, then waits (with a timeout) for the node to exit.
    pub fn signal(mut self, name: &str) -> Exited {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
        // The node closes its stdout when it exits.
        loop {
            match self.lines.recv_timeout(NODE_TIMEOUT) {
                Ok(Some(line)) => self.stdout.push(line),
                Ok(None) => break,
                Err(_) => panic!("the node did not exit after SIG{name}\nlog: {}", self.log()),
            }
        }
        let status = self.child.wait().expect("wait for the node");
        Exited {
            status,
            stdout: std::mem::take(&mut self.stdout),
            log: self.log(),
        }
    }

    /// SIGKILL: the node dies at once, leaving its control file behind.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill the node");
        self.child.wait().expect("wait for the node");
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(NODE_TIMEOUT))
            .build()
            .into()
    }

    fn answer(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut resp = resp.expect("HTTP request to the control API");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().expect("read the answer");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text:?}"));
        Answer { status, json }
    }

    /// `GET path`, with `Authorization: <auth>` if given (e.g. `Bearer <token>`).
    pub fn get(&self, path: &str, auth: Option<&str>) -> Answer {
        let mut req = Self::agent().get(format!("{}{path}", self.url));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        Self::answer(req.call())
    }

    /// `POST path` with a JSON body, with `Authorization: <auth>` if given.
    pub fn post(&self, path: &str, auth: Option<&str>, body: &str) -> Answer {
        let mut req = Self::agent()
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/json");
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        Self::answer(req.send(body))
    }

    /// Runs a command line in the node through `POST /v1/command` with the right token.
    pub fn command(&self, args: &[&str]) -> Answer {
        let body = serde_json::json!({ "args": args }).to_string();
        self.post(
            "/v1/command",
            Some(&format!("Bearer {}", self.token())),
            &body,
        )
    }

    /// Subscribes to `GET /v1/events`; returns once subscribed (the response headers arrived).
    pub fn events(&self) -> Events {
        let resp = Self::agent()
            .get(format!("{}/v1/events", self.url))
            .header("Authorization", format!("Bearer {}", self.token()))
            .config()
            .timeout_global(None)
            .build()
            .call()
            .expect("subscribe to events");
        assert_eq!(resp.status().as_u16(), 200, "events stream status");
        let reader = resp.into_body().into_reader();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut event = String::new();
            for line in std::io::BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_string();
                } else if let Some(data) = line.strip_prefix("data:") {
                    let data = serde_json::from_str(data.trim()).unwrap_or_default();
                    if tx.send((std::mem::take(&mut event), data)).is_err() {
                        return;
                    }
                }
            }
        });
        Events { rx }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A Server-Sent Events subscription to the node.
pub struct Events {
    rx: mpsc::Receiver<(String, serde_json::Value)>,
}

impl Events {
    /// Skips events until one named `name` satisfies `f`, waiting at most [`NODE_TIMEOUT`]
    /// for each; returns its data.
    pub fn wait(&self, name: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let (n, data) = self.next();
            if n == name && f(&data) {
                return data;
            }
        }
    }

    /// The next event within `timeout`, or `None`.
    pub fn next_within(&self, timeout: Duration) -> Option<(String, serde_json::Value)> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next event (`event:` name and `data:` JSON), waiting at most [`NODE_TIMEOUT`].
    pub fn next(&self) -> (String, serde_json::Value) {
        self.rx
            .recv_timeout(NODE_TIMEOUT)
            .expect("an event within the timeout")
    }
}

/// A real PNG of the given size (a gradient, so it is not trivially compressible).
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// Two network namespaces joined by a veth pair (10.78.N.1/24 and 10.78.N.2/24, multicast
/// routed on the veth), deleted on drop even when a test fails. Needs root and iproute2.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
}

/// Whether this process is root (network namespace tests need it; CI is root).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (scripts/setup installs iproute2): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetnsPair {
    pub fn new(tag: &str) -> NetnsPair {
        let n = std::process::id() % 200 + 20;
        let pair = NetnsPair {
            a: format!("ic-{tag}-{n}-a"),
            b: format!("ic-{tag}-{n}-b"),
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        let (va, vb) = (format!("ic{n}{tag}a"), format!("ic{n}{tag}b"));
        let (va, vb) = (&va[..va.len().min(15)], &vb[..vb.len().min(15)]);
        ip(&[
            "link", "add", va, "netns", &pair.a, "type", "veth", "peer", "name", vb, "netns",
            &pair.b,
        ]);
        for (ns, dev, addr) in [
            (&pair.a, va, format!("10.78.{n}.1/24")),
            (&pair.b, vb, format!("10.78.{n}.2/24")),
        ] {
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "multicast", "on"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev]);
        }
        // Carrier follows both ends being up; wait for it (each `ip` call is the wait).
        for (ns, dev) in [(&pair.a, va), (&pair.b, vb)] {
            let deadline = std::time::Instant::now() + NODE_TIMEOUT;
            loop {
                let out = Command::new("ip")
                    .args(["-n", ns, "-o", "link", "show", "dev", dev])
                    .output()
                    .expect("run ip");
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("LOWER_UP") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{dev} in {ns} never came up: {text}"
                );
            }
        }
        pair
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The lines a child prints on its piped stdout, read on a thread; `None` when it closes.
pub fn stdout_lines(child: &mut std::process::Child) -> mpsc::Receiver<Option<String>> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    lines
}

/// Checks `f` every 100 ms until it returns `Some`, for at most `timeout`; panics with `what`
/// and the last value seen otherwise. For conditions with no event to wait for (a relay's
/// metrics, states in a store).
pub fn wait_until<T, L: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, L>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; last seen: {last:?}"
            ),
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}
