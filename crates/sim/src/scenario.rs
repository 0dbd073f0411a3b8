//! The scenario file: what a simulation runs. `simulations/README.md` documents every key.
//!
//! A scenario is TOML. Unknown keys are refused; every error names the key path
//! (`link.loss`, `faults.crashes[1].node`, ...). Durations and bandwidths carry units
//! ([`crate::units`]). A contact trace named by `mobility.file` is read relative to the scenario
//! file and becomes part of the scenario (and of its hash).

use std::path::{Path, PathBuf};

use instaconnect_wire::mailbox::MAX_ENVELOPE_BYTES;
use instaconnect_wire::proto::MAX_TEXT_BYTES;
use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::trace::{self, ContactEvent};
use crate::units::{Bandwidth, Millis};

/// Most devices a scenario may have.
pub const MAX_DEVICES: u32 = 100_000;
/// Most relays a scenario may name.
pub const MAX_RELAYS: u32 = 10_000;
/// Most copies spray-and-wait may hand out per envelope.
pub const MAX_COPIES: u32 = 1_000_000;
/// Most workload contacts per device (below the engine's `MAX_PEERS`).
pub const MAX_CONTACTS_PER_DEVICE: u32 = 1_000;
/// Most messages a run may create; the expected count must stay below half of it.
pub const MAX_MESSAGES: u64 = 20_000_000;
/// Most meetings the random-meetings model may be expected to generate in a run.
pub const MAX_EXPECTED_MEETINGS: f64 = 200_000_000.0;
/// Most mobility ticks in a run (random waypoint).
pub const MAX_TICKS: u64 = 100_000_000;
/// Most partitions plus crashes.
pub const MAX_FAULTS: usize = 100_000;
/// Largest scenario file read.
pub const MAX_SCENARIO_BYTES: u64 = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Default seed; `run` takes the seed to use (the CLI's `--seed` overrides this one).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated time.
    pub duration: Millis,
    pub nodes: Nodes,
    pub mobility: Mobility,
    #[serde(default)]
    pub radio: Radio,
    #[serde(default)]
    pub link: Link,
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default)]
    pub buffers: Buffers,
    #[serde(default)]
    pub faults: Faults,
}

fn default_seed() -> u64 {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nodes {
    /// Devices: each runs a real engine on its own in-memory store.
    pub devices: u32,
    /// Store-and-forward relays (real sans-IO relays): they take part with strategy `relays`.
    #[serde(default)]
    pub relays: u32,
    /// Whether devices let contacts see them online (the privacy setting `online`): if so, every
    /// new connection between contacts carries a sealed presence frame each way.
    #[serde(default = "yes")]
    pub share_presence: bool,
}

fn yes() -> bool {
    true
}

/// How devices come into range of each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mobility {
    /// Devices stand still on a grid filling `area`; pairs within `radio.range` are linked.
    StaticGrid {
        /// Width and height in metres.
        area: [f64; 2],
    },
    /// Random waypoint in `area`: walk at a speed drawn from `speed` to a uniform random
    /// point, pause for a time drawn from `pause`, repeat. Positions advance every `tick`.
    RandomWaypoint {
        area: [f64; 2],
        /// Metres per second, [min, max].
        speed: [f64; 2],
        /// [min, max].
        pause: [Millis; 2],
        #[serde(default = "default_tick")]
        tick: Millis,
    },
    /// Every pair of devices meets as a Poisson process of rate `rate_per_hour`; a meeting
    /// keeps the pair linked for `meeting_duration` (overlapping meetings merge).
    RandomMeetings {
        rate_per_hour: f64,
        meeting_duration: Millis,
    },
    /// The ONE simulator's connection events, `time CONN a b up|down` (time in seconds,
    /// devices numbered from 0), from a file relative to the scenario.
    Trace {
        file: String,
        #[serde(skip)]
        events: Vec<ContactEvent>,
    },
}

fn default_tick() -> Millis {
    Millis(1_000)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Radio {
    /// Metres; used by the position-based models.
    #[serde(default = "default_range")]
    pub range: f64,
}

fn default_range() -> f64 {
    30.0
}

impl Default for Radio {
    fn default() -> Self {
        Radio {
            range: default_range(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// One-way propagation delay of every frame.
    #[serde(default = "default_latency")]
    pub latency: Millis,
    /// Per direction of a link; a frame occupies it for size / bandwidth.
    #[serde(default = "default_bandwidth")]
    pub bandwidth: Bandwidth,
    /// Probability that a frame (request or response) is lost.
    #[serde(default)]
    pub loss: f64,
    /// How long a requester waits for a response before the request fails.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Millis,
}

fn default_latency() -> Millis {
    Millis(5)
}
fn default_bandwidth() -> Bandwidth {
    Bandwidth(10_000_000)
}
fn default_request_timeout() -> Millis {
    Millis(10_000)
}

impl Default for Link {
    fn default() -> Self {
        Link {
            latency: default_latency(),
            bandwidth: default_bandwidth(),
            loss: 0.0,
            request_timeout: default_request_timeout(),
        }
    }
}

/// Devices go offline and come back: up and down times are exponential with these means.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    pub mean_up: Millis,
    pub mean_down: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Messages per device per hour (a Poisson process over the whole mesh).
    #[serde(default = "default_rate")]
    pub rate_per_hour: f64,
    /// Messages are created from `start` ...
    #[serde(default)]
    pub start: Millis,
    /// ... until `stop` (default: the end of the run).
    #[serde(default)]
    pub stop: Option<Millis>,
    /// Random workload partners per device (made contacts before the run); the contact graph
    /// is their union, so a device has at least this many (all others if fewer devices).
    #[serde(default = "default_contacts")]
    pub contacts: u32,
    #[serde(default)]
    pub pairing: Pairing,
    #[serde(default)]
    pub size: SizeDist,
    /// A message delivered later than this after its creation counts as not delivered.
    #[serde(default)]
    pub ttl: Option<Millis>,
    /// Share of group messages: accepted, not simulated yet (every message is 1:1).
    #[serde(default)]
    pub group_share: f64,
}

fn default_rate() -> f64 {
    1.0
}
fn default_contacts() -> u32 {
    10
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            rate_per_hour: default_rate(),
            start: Millis(0),
            stop: None,
            contacts: default_contacts(),
            pairing: Pairing::default(),
            size: SizeDist::default(),
            ttl: None,
            group_share: 0.0,
        }
    }
}

/// Who writes to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// A uniformly random device writes to one of its contacts, uniformly.
    #[default]
    Random,
    /// Each message uses a contact pair no earlier message used (so per-pair delays are
    /// independent samples); once every pair was used, no more messages are created.
    Distinct,
}

/// Text sizes in bytes (1 to the protocol's largest text).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SizeDist {
    Fixed {
        bytes: u32,
    },
    /// Uniform over [min, max].
    Uniform {
        min: u32,
        max: u32,
    },
}

impl Default for SizeDist {
    fn default() -> Self {
        SizeDist::Fixed { bytes: 100 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    #[serde(default)]
    pub strategy: Strategy,
    /// Copies per message for spray-and-wait.
    #[serde(default)]
    pub copies: Option<u32>,
    /// One-way latency between a device and a relay (strategy `relays`; default `link.latency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_latency: Option<Millis>,
    /// How long relays keep an envelope (strategy `relays`; default 14 days, the product's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ttl: Option<Millis>,
}

impl Routing {
    /// `relay_ttl` in milliseconds, or the product's default.
    pub fn relay_ttl_ms(&self) -> u64 {
        self.relay_ttl.map_or(
            instaconnect_core::relay::RelayConfig::default().ttl_ms,
            |t| t.ms(),
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The product today: a device sends only to the recipient, over a current link.
    #[default]
    Direct,
    /// Through the product's store-and-forward relays (`nodes.relays` of them), and direct.
    Relays,
    /// LAN store-carry-forward flooding: every device carries sealed envelopes for others and
    /// copies them to every device it meets.
    Flooding,
    /// Binary spray-and-wait with `copies` copies per envelope.
    SprayAndWait,
}

impl Strategy {
    /// Whether the devices deposit sealed envelopes (in relays or in carry buffers).
    pub fn stores_and_forwards(self) -> bool {
        self != Strategy::Direct
    }

    /// Whether the envelopes travel in devices' carry buffers (flooding, spray-and-wait).
    pub fn carries(self) -> bool {
        matches!(self, Strategy::Flooding | Strategy::SprayAndWait)
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::Relays => "relays",
            Strategy::Flooding => "flooding",
            Strategy::SprayAndWait => "spray_and_wait",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Buffers {
    /// Most undelivered messages a device holds; the workload creates no more while full
    /// (those messages count as created and dropped).
    #[serde(default = "default_outbox")]
    pub outbox_messages: u32,
    /// Most envelopes a device carries for others (flooding, spray-and-wait; default
    /// [`DEFAULT_CARRY_ENVELOPES`]); the oldest is dropped to make room. (Optional so that
    /// the hash of a scenario that does not set it stays what it was.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carry_envelopes: Option<u32>,
    /// Most bytes of envelopes a device carries for others (default [`DEFAULT_CARRY_BYTES`]);
    /// the oldest are dropped to make room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carry_bytes: Option<u64>,
}

/// Default of `buffers.carry_envelopes`.
pub const DEFAULT_CARRY_ENVELOPES: u32 = 1_000;
/// Default of `buffers.carry_bytes` (16 MiB).
pub const DEFAULT_CARRY_BYTES: u64 = 16 * 1024 * 1024;

impl Buffers {
    /// `carry_envelopes` or its default.
    pub fn carry_envelopes(&self) -> u32 {
        self.carry_envelopes.unwrap_or(DEFAULT_CARRY_ENVELOPES)
    }
    /// `carry_bytes` or its default.
    pub fn carry_bytes(&self) -> u64 {
        self.carry_bytes.unwrap_or(DEFAULT_CARRY_BYTES)
    }
}

fn default_outbox() -> u32 {
    1_000
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            outbox_messages: default_outbox(),
            carry_envelopes: None,
            carry_bytes: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub partitions: Vec<Partition>,
    #[serde(default)]
    pub crashes: Vec<Crash>,
}

/// From `start` to `end`, devices are split into `groups` blocks by index (device i is in
/// block i * groups / devices) and no link crosses blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub start: Millis,
    pub end: Millis,
    #[serde(default = "default_groups")]
    pub groups: u32,
}

fn default_groups() -> u32 {
    2
}

/// Device `node`'s process dies at `at` (its links drop, its in-memory engine state is lost,
/// its store survives) and, with `restart_after`, starts again from its store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    pub node: u32,
    pub at: Millis,
    #[serde(default)]
    pub restart_after: Option<Millis>,
}

impl Partition {
    /// The block of device `i` of `devices`.
    pub fn group_of(&self, i: u32, devices: u32) -> u32 {
        ((i as u64 * self.groups as u64) / devices.max(1) as u64) as u32
    }
}

impl Scenario {
    /// Reads a scenario file (and the trace it names, relative to it).
    pub fn from_toml_file(path: &Path) -> Result<Scenario, SimError> {
        let label = path.display().to_string();
        let io = |action, source| SimError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(|e| io("read", e))?.len();
        if len > MAX_SCENARIO_BYTES {
            return Err(SimError::Syntax {
                file: label,
                message: format!(
                    "the file has {len} bytes; a scenario has at most {MAX_SCENARIO_BYTES}"
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| io("read", e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &label, base)
    }

    /// Parses a scenario from TOML text; a trace file is read relative to `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Scenario, SimError> {
        Self::parse(text, "scenario", base_dir)
    }

    /// Reads a scenario file with values replaced or added at key paths (`workload.rate_per_hour`,
    /// `faults.crashes[0].node`), as `sim sweep --set` does. Each value is checked exactly as if
    /// it were written in the file; errors name the key.
    pub fn from_toml_file_with(
        path: &Path,
        sets: &[(String, toml::Value)],
    ) -> Result<Scenario, SimError> {
        if sets.is_empty() {
            return Self::from_toml_file(path);
        }
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_with(&text, &label, base, sets)
    }

    /// [`Scenario::from_toml_str`] with values set at key paths.
    pub fn from_toml_str_with(
        text: &str,
        base_dir: &Path,
        sets: &[(String, toml::Value)],
    ) -> Result<Scenario, SimError> {
        Self::parse_with(text, "scenario", base_dir, sets)
    }

    fn parse_with(
        text: &str,
        label: &str,
        base_dir: &Path,
        sets: &[(String, toml::Value)],
    ) -> Result<Scenario, SimError> {
        if sets.is_empty() {
            return Self::parse(text, label, base_dir);
        }
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| SimError::Syntax {
                    file: label.to_string(),
                    message: one_line(&e.to_string()),
                })?;
        for (key, value) in sets {
            set_path(&mut table, key, value.clone()).map_err(|message| SimError::Scenario {
                file: label.to_string(),
                key: key.clone(),
                message,
            })?;
        }
        let scenario = serde_path_to_error::deserialize(toml::Value::Table(table));
        Self::finish(scenario, label, base_dir)
    }

    fn parse(text: &str, label: &str, base_dir: &Path) -> Result<Scenario, SimError> {
        let de = toml::Deserializer::parse(text).map_err(|e| SimError::Syntax {
            file: label.to_string(),
            message: one_line(&e.to_string()),
        })?;
        Self::finish(serde_path_to_error::deserialize(de), label, base_dir)
    }

    fn finish<E: std::fmt::Display>(
        parsed: Result<Scenario, serde_path_to_error::Error<E>>,
        label: &str,
        base_dir: &Path,
    ) -> Result<Scenario, SimError> {
        let mut scenario: Scenario = parsed.map_err(|e| {
            let key = e.path().to_string();
            let message = one_line(&e.inner().to_string());
            if key == "." {
                SimError::Syntax {
                    file: label.to_string(),
                    message,
                }
            } else {
                SimError::Scenario {
                    file: label.to_string(),
                    key,
                    message,
                }
            }
        })?;
        if let Mobility::Trace { file, events } = &mut scenario.mobility {
            let path: PathBuf = base_dir.join(&*file);
            *events = trace::load(&path, scenario.nodes.devices)?;
        }
        scenario.validate_as(label)?;
        Ok(scenario)
    }

    /// Checks every value (the loaders call it; `run` calls it again).
    pub fn validate(&self) -> Result<(), SimError> {
        self.validate_as("scenario")
    }

    fn validate_as(&self, file: &str) -> Result<(), SimError> {
        let bad = |key: &str, message: String| {
            Err(SimError::Scenario {
                file: file.to_string(),
                key: key.to_string(),
                message,
            })
        };
        let duration = self.duration.ms();
        if duration == 0 {
            return bad("duration", "must be longer than 0".into());
        }
        let n = self.nodes.devices;
        if n == 0 || n > MAX_DEVICES {
            return bad(
                "nodes.devices",
                format!("must be 1 to {MAX_DEVICES}, got {n}"),
            );
        }
        if self.nodes.relays > MAX_RELAYS {
            return bad(
                "nodes.relays",
                format!("must be at most {MAX_RELAYS}, got {}", self.nodes.relays),
            );
        }
        let area_ok = |a: &[f64; 2]| a.iter().all(|v| v.is_finite() && *v > 0.0);
        match &self.mobility {
            Mobility::StaticGrid { area } => {
                if !area_ok(area) {
                    return bad(
                        "mobility.area",
                        "width and height must be > 0 metres".into(),
                    );
                }
            }
            Mobility::RandomWaypoint {
                area,
                speed,
                pause,
                tick,
            } => {
                if !area_ok(area) {
                    return bad(
                        "mobility.area",
                        "width and height must be > 0 metres".into(),
                    );
                }
                if !(speed[0].is_finite() && speed[1].is_finite())
                    || speed[0] <= 0.0
                    || speed[0] > speed[1]
                {
                    return bad(
                        "mobility.speed",
                        format!("expected [min, max] m/s with 0 < min <= max, got {speed:?}"),
                    );
                }
                if pause[0] > pause[1] {
                    return bad(
                        "mobility.pause",
                        "expected [min, max] with min <= max".into(),
                    );
                }
                if tick.ms() == 0 {
                    return bad("mobility.tick", "must be longer than 0".into());
                }
                if duration / tick.ms() > MAX_TICKS {
                    return bad(
                        "mobility.tick",
                        format!(
                            "{} ticks in this run; at most {MAX_TICKS}",
                            duration / tick.ms()
                        ),
                    );
                }
            }
            Mobility::RandomMeetings {
                rate_per_hour,
                meeting_duration,
            } => {
                if !rate_per_hour.is_finite() || *rate_per_hour <= 0.0 {
                    return bad("mobility.rate_per_hour", "must be a number > 0".into());
                }
                if meeting_duration.ms() == 0 {
                    return bad("mobility.meeting_duration", "must be longer than 0".into());
                }
                let pairs = n as f64 * (n as f64 - 1.0) / 2.0;
                let expected = rate_per_hour * pairs * duration as f64 / 3_600_000.0;
                if expected > MAX_EXPECTED_MEETINGS {
                    return bad(
                        "mobility.rate_per_hour",
                        format!(
                            "about {expected:.0} meetings expected; at most {MAX_EXPECTED_MEETINGS:.0}"
                        ),
                    );
                }
            }
            Mobility::Trace { events, .. } => {
                if let Some(e) = events.iter().find(|e| e.a >= n || e.b >= n || e.a == e.b) {
                    return bad(
                        "mobility.file",
                        format!(
                            "the trace links devices {} and {}; devices are numbered 0 to {}",
                            e.a,
                            e.b,
                            n - 1
                        ),
                    );
                }
            }
        }
        if !self.radio.range.is_finite() || self.radio.range < 0.0 {
            return bad("radio.range", "must be >= 0 metres".into());
        }
        if !(0.0..1.0).contains(&self.link.loss) {
            return bad(
                "link.loss",
                format!("must be a probability in [0, 1), got {}", self.link.loss),
            );
        }
        if self.link.request_timeout.ms() == 0 {
            return bad("link.request_timeout", "must be longer than 0".into());
        }
        if let Some(c) = &self.churn {
            if c.mean_up.ms() == 0 {
                return bad("churn.mean_up", "must be longer than 0".into());
            }
            if c.mean_down.ms() == 0 {
                return bad("churn.mean_down", "must be longer than 0".into());
            }
        }
        let w = &self.workload;
        if !w.rate_per_hour.is_finite() || w.rate_per_hour < 0.0 {
            return bad("workload.rate_per_hour", "must be a number >= 0".into());
        }
        let stop = w.stop.map_or(duration, |s| s.ms());
        if stop > duration {
            return bad(
                "workload.stop",
                "must not be after the end of the run".into(),
            );
        }
        if w.start.ms() > stop {
            return bad("workload.start", "must not be after workload.stop".into());
        }
        if w.contacts == 0 || w.contacts > MAX_CONTACTS_PER_DEVICE {
            return bad(
                "workload.contacts",
                format!("must be 1 to {MAX_CONTACTS_PER_DEVICE}, got {}", w.contacts),
            );
        }
        let expected = w.rate_per_hour * n as f64 * (stop - w.start.ms()) as f64 / 3_600_000.0;
        if expected > (MAX_MESSAGES / 2) as f64 {
            return bad(
                "workload.rate_per_hour",
                format!(
                    "about {expected:.0} messages expected; at most {}",
                    MAX_MESSAGES / 2
                ),
            );
        }
        let max = MAX_TEXT_BYTES as u32;
        match w.size {
            SizeDist::Fixed { bytes } => {
                if bytes == 0 || bytes > max {
                    return bad("workload.size.bytes", format!("must be 1 to {max}"));
                }
            }
            SizeDist::Uniform { min, max: hi } => {
                if min == 0 || min > hi || hi > max {
                    return bad(
                        "workload.size",
                        format!("expected 1 <= min <= max <= {max}, got min {min}, max {hi}"),
                    );
                }
            }
        }
        if w.ttl.is_some_and(|t| t.ms() == 0) {
            return bad("workload.ttl", "must be longer than 0".into());
        }
        if !(0.0..=1.0).contains(&w.group_share) {
            return bad("workload.group_share", "must be in [0, 1]".into());
        }
        let r = &self.routing;
        match (r.strategy, r.copies) {
            (Strategy::SprayAndWait, None) => {
                return bad(
                    "routing.copies",
                    "strategy \"spray_and_wait\" needs the number of copies".into(),
                )
            }
            (Strategy::SprayAndWait, Some(l)) if l == 0 || l > MAX_COPIES => {
                return bad(
                    "routing.copies",
                    format!("must be 1 to {MAX_COPIES}, got {l}"),
                )
            }
            (Strategy::SprayAndWait, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return bad(
                    "routing.copies",
                    "applies only to strategy \"spray_and_wait\"".into(),
                )
            }
        }
        if r.strategy == Strategy::Relays && self.nodes.relays == 0 {
            return bad(
                "nodes.relays",
                "strategy \"relays\" needs at least one relay".into(),
            );
        }
        for (key, set) in [
            ("routing.relay_latency", r.relay_latency.is_some()),
            ("routing.relay_ttl", r.relay_ttl.is_some()),
        ] {
            if set && r.strategy != Strategy::Relays {
                return bad(key, "applies only to strategy \"relays\"".into());
            }
        }
        if r.relay_ttl.is_some_and(|t| t.ms() == 0) {
            return bad("routing.relay_ttl", "must be longer than 0".into());
        }
        if self.buffers.outbox_messages == 0 {
            return bad("buffers.outbox_messages", "must be at least 1".into());
        }
        if self.buffers.carry_envelopes() == 0 {
            return bad("buffers.carry_envelopes", "must be at least 1".into());
        }
        if self.buffers.carry_bytes() < MAX_ENVELOPE_BYTES as u64 {
            return bad(
                "buffers.carry_bytes",
                format!("must be at least {MAX_ENVELOPE_BYTES} (the largest envelope)"),
            );
        }
        let f = &self.faults;
        if f.partitions.len() + f.crashes.len() > MAX_FAULTS {
            return bad("faults", format!("at most {MAX_FAULTS} faults"));
        }
        for (i, p) in f.partitions.iter().enumerate() {
            if p.start >= p.end {
                return bad(
                    &format!("faults.partitions[{i}].end"),
                    "must be after start".into(),
                );
            }
            if p.groups < 2 || p.groups > n {
                return bad(
                    &format!("faults.partitions[{i}].groups"),
                    format!("must be 2 to the number of devices ({n})"),
                );
            }
        }
        for (i, c) in f.crashes.iter().enumerate() {
            if c.node >= n {
                return bad(
                    &format!("faults.crashes[{i}].node"),
                    format!("no device {} (devices are numbered 0 to {})", c.node, n - 1),
                );
            }
            if c.restart_after.is_some_and(|r| r.ms() == 0) {
                return bad(
                    &format!("faults.crashes[{i}].restart_after"),
                    "must be longer than 0".into(),
                );
            }
        }
        Ok(())
    }

    /// A hash of everything that determines a run besides the seed (the parsed values and
    /// the trace), hex-encoded.
    pub fn hash(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"instaconnect-sim/scenario/v1\0");
        // Serialising plain data to JSON cannot fail.
        h.update(&serde_json::to_vec(self).unwrap_or_default());
        if let Mobility::Trace { events, .. } = &self.mobility {
            for e in events {
                h.update(&e.at_ms.to_le_bytes());
                h.update(&e.a.to_le_bytes());
                h.update(&e.b.to_le_bytes());
                h.update(&[e.up as u8]);
            }
        }
        h.finalize().to_hex().to_string()
    }

    /// When the workload stops creating messages.
    pub fn workload_stop(&self) -> Millis {
        self.workload.stop.unwrap_or(self.duration)
    }
}

/// Sets `value` at a key path such as `workload.rate_per_hour` or `faults.crashes[0].node`:
/// missing tables are created, array elements must exist. The error says what is wrong with the
/// path.
fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("expected a key path such as `workload.rate_per_hour`".into());
    }
    let mut cur = table;
    for (k, part) in parts.iter().enumerate() {
        let last = k + 1 == parts.len();
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => {
                let i = rest
                    .strip_suffix(']')
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(|| format!("`{part}`: expected `name[index]`"))?;
                (name, Some(i))
            }
            None => (*part, None),
        };
        if name.is_empty() {
            return Err(format!("`{part}`: expected a key name"));
        }
        let slot = match index {
            None if last => {
                cur.insert(name.to_string(), value);
                return Ok(());
            }
            None => cur
                .entry(name.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
            Some(i) => {
                let arr = cur
                    .get_mut(name)
                    .and_then(toml::Value::as_array_mut)
                    .ok_or_else(|| format!("`{name}` is not a list in the scenario"))?;
                let len = arr.len();
                let slot = arr
                    .get_mut(i)
                    .ok_or_else(|| format!("`{name}` has {len} entries; there is no [{i}]"))?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
        };
        cur = slot
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a table", parts[..=k].join(".")))?;
    }
    Ok(())
}

/// toml's errors span several lines: a location, a source excerpt, then the message. Keep the
/// location and the message, on one line.
fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let location = lines
        .first()
        .and_then(|l| l.strip_prefix("TOML parse error at "));
    // The excerpt's lines start with a line number or a bar.
    let message: Vec<&str> = lines
        .iter()
        .skip(usize::from(location.is_some()))
        .filter(|l| {
            !(l.starts_with('|')
                || l.split('|')
                    .next()
                    .is_some_and(|n| n.trim().parse::<u64>().is_ok()))
        })
        .copied()
        .collect();
    match location {
        Some(loc) => format!("{loc}: {}", message.join(" ")),
        None => lines.join(" "),
    }
}
