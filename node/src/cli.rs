//! The command line: argument parsing and one function per command.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};
use instaconnect_core::book::{
    privacy_get, visibility_str, Book, ImportEntry, ImportSummary, PRIVACY_FIELDS,
};
use instaconnect_core::export::{role_str, GroupOut};
use instaconnect_core::phone::{Phone, Region};
use instaconnect_store::{SledStore, Store};
use instaconnect_wire::proto::AttachmentKind;
use instaconnect_wire::records::{GroupId, GroupRecord, Role};
use serde_json::json;

use crate::config::LogFormat;
use crate::home::Home;
use crate::output::{time, Out};
use crate::{usage, Failure};
use instaconnect_net::driver::DriverHandle;

/// Largest contacts file `contacts import` reads.
const MAX_IMPORT_BYTES: u64 = 32 * 1024 * 1024;
/// Largest file `profile set --picture` reads (the picture limit itself is checked by content).
const MAX_PICTURE_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "instaconnect",
    version,
    about = "InstaConnect Mesh: a peer-to-peer messenger with no server that can read anything",
    propagate_version = true
)]
pub struct Cli {
    /// Data directory [default: $INSTACONNECT_HOME, else the platform data dir, e.g. ~/.local/share/instaconnect]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Country (ISO 3166 code such as IN or US) for reading phone numbers without a country code; remembered in settings
    #[arg(long, global = true, value_name = "CODE")]
    region: Option<String>,
    /// Print results as JSON
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the node in the foreground, with its control API on 127.0.0.1 (stop with Ctrl-C or SIGTERM)
    Run(RunArgs),
    /// Run a store-and-forward relay in the foreground: it keeps sealed envelopes for offline
    /// devices (no account needed; stop with Ctrl-C or SIGTERM; see configs/relay.toml)
    Relay(RelayArgs),
    /// Create and show the account
    #[command(subcommand)]
    Account(AccountCmd),
    /// Your profile: name, status message and picture
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Your address book
    #[command(subcommand)]
    Contacts(ContactsCmd),
    /// Block a contact or number: their messages are dropped and they see nothing of you
    Block {
        /// Phone number or contact name
        contact: String,
    },
    /// Unblock a contact or number
    Unblock {
        /// Phone number or contact name
        contact: String,
    },
    /// List blocked numbers
    Blocked,
    /// Groups of contacts
    #[command(subcommand)]
    Groups(GroupsCmd),
    /// Who sees your phone, name, picture, status, online state, receipts and location
    #[command(subcommand)]
    Privacy(PrivacyCmd),
    /// Send a text message, a photo, video, voice message or file to a contact (queued until
    /// their device can be reached)
    Send {
        /// Phone number or contact name
        contact: String,
        /// The message, or an attachment's caption (several words are joined with spaces; put
        /// text that starts with - after --)
        #[arg(num_args = 0.., required_unless_present_any = ["photo", "video", "voice", "file", "location", "live"])]
        text: Vec<String>,
        /// Send a photo (PNG, JPEG or WebP): its size and a thumbnail go with it
        #[arg(long, value_name = "FILE", group = "attachment")]
        photo: Option<PathBuf>,
        /// Send a video
        #[arg(long, value_name = "FILE", group = "attachment")]
        video: Option<PathBuf>,
        /// Send a voice message
        #[arg(long, value_name = "FILE", group = "attachment")]
        voice: Option<PathBuf>,
        /// Send any file
        #[arg(long, value_name = "FILE", group = "attachment")]
        file: Option<PathBuf>,
        /// With an attachment: stay until the contact's device has all of it, with a progress
        /// bar (needs the running node; Ctrl-C stops waiting, not the transfer)
        #[arg(long, requires = "attachment")]
        wait: bool,
        /// Send a location: LAT,LON in decimal degrees, e.g. 52.52,13.405 (no text with it)
        #[arg(
            long,
            value_name = "LAT,LON",
            group = "attachment",
            allow_hyphen_values = true,
            conflicts_with = "text"
        )]
        location: Option<String>,
        /// Share your live location for MINUTES (1 to 480): your position (--location, else
        /// `location set`) goes now and again at every interval until then or `location stop`;
        /// needs `privacy set location contacts` (or everyone)
        #[arg(long, value_name = "MINUTES", value_parser = clap::value_parser!(u64).range(1..=480), conflicts_with_all = ["photo", "video", "voice", "file", "text"])]
        live: Option<u64>,
    },
    /// Received photos, videos, voice messages and files
    #[command(subcommand)]
    Attachments(AttachmentsCmd),
    /// Conversations with unread counts and their last message
    Inbox,
    /// The messages of a conversation with ids, times and states (marks them read)
    History {
        /// Phone number or contact name
        contact: String,
    },
    /// Mark a conversation read (read receipts go out if your privacy allows)
    Read {
        /// Phone number or contact name
        contact: String,
    },
    /// Chat with a contact: type lines to send them; incoming messages and delivery states show
    /// up live (needs `instaconnect run`; end with Ctrl-D or /quit)
    Chat {
        /// Phone number or contact name
        contact: String,
    },
    /// Users seen on the network and what their privacy lets you see (needs `instaconnect run`)
    Nearby,
    /// Mesh simulations of the node logic (no account or node needed)
    #[command(subcommand)]
    Sim(SimCmd),
    /// Print an invite (link and QR code) that lets someone add you with your keys
    Invite {
        /// Leave your phone number out of the invite
        #[arg(long)]
        no_phone: bool,
        /// Days the invite stays valid (1 to 30)
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=30))]
        days: u64,
        /// Print only the link, no QR code
        #[arg(long)]
        no_qr: bool,
    },
    /// Your position, and live locations you share (see `send --location`, `send --live`)
    #[command(subcommand)]
    Location(LocationCmd),
    /// Forward a message (text, location or attachment) to a contact: it shows as forwarded
    Forward {
        /// The message id (`instaconnect history CONTACT --json`)
        id: String,
        /// Phone number or contact name
        contact: String,
    },
    /// Export the whole account as one JSON file
    Export {
        /// Write to FILE instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Include the secret keys (keep such a file safe)
        #[arg(long)]
        include_keys: bool,
    },
}

/// Options of `instaconnect run`; each overrides the config file, which overrides the defaults.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Multiaddr to listen on, e.g. /ip4/0.0.0.0/tcp/0 (repeatable; replaces network.listen)
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Multiaddr of a peer to dial at start, e.g. /ip4/192.168.1.7/tcp/4001 (repeatable; replaces network.peers)
    #[arg(long, value_name = "MULTIADDR")]
    pub peer: Vec<String>,
    /// Multiaddr of a store-and-forward relay, ending in /p2p/<relay peer id>, e.g. /ip4/192.168.1.7/tcp/4001/p2p/12D3KooW... (repeatable; replaces network.relays)
    #[arg(long, value_name = "MULTIADDR")]
    pub relay: Vec<String>,
    /// Do not advertise or browse for peers on the local network (mDNS)
    #[arg(long)]
    pub no_mdns: bool,
    /// Config file (TOML, see configs/device.toml)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Port of the control API on 127.0.0.1 [default: 0, any free port]
    #[arg(long, value_name = "N")]
    pub control_port: Option<u16>,
    /// Log format on standard error [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Options of `instaconnect relay`; each overrides the config file, which overrides the defaults.
#[derive(Args, Debug, Default)]
pub struct RelayArgs {
    /// Config file (TOML, see configs/relay.toml)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Multiaddr to listen on, e.g. /ip4/0.0.0.0/tcp/4001 (repeatable; replaces network.listen)
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Where the relay keeps its envelopes and its identity key [default: data_dir from the config, else the platform data dir, e.g. ~/.local/share/instaconnect-relay]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Do not advertise the relay on the local network (mDNS)
    #[arg(long)]
    pub no_mdns: bool,
    /// Loopback address of the Prometheus /metrics endpoint, e.g. 127.0.0.1:9464 (port 0: any free port)
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Log format on standard error [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Subcommand, Debug)]
pub enum AccountCmd {
    /// Create the account on this device
    Create {
        /// Your mobile number in E.164, such as +919812345678
        #[arg(long)]
        phone: String,
        /// Your profile name
        #[arg(long)]
        name: String,
    },
    /// Show the account: phone, name, status, peer id and key fingerprint
    Show,
    /// Delete the account: take back undelivered messages and mailboxes from every relay (each
    /// relay's signed receipt is shown), then wipe the data dir. The node must be stopped
    Delete {
        /// Wipe even if some relay did not confirm (what it holds stays until it expires)
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation (needed without a terminal)
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProfileCmd {
    /// Change profile fields
    Set(ProfileSet),
    /// Show your profile
    Show,
}

#[derive(Args, Debug)]
pub struct ProfileSet {
    #[arg(long)]
    name: Option<String>,
    /// Status message (empty to clear)
    #[arg(long)]
    status: Option<String>,
    /// Profile picture: PNG, JPEG or WebP, at most 5 MiB
    #[arg(long, value_name = "FILE", conflicts_with = "remove_picture")]
    picture: Option<PathBuf>,
    /// Remove the profile picture
    #[arg(long)]
    remove_picture: bool,
}

#[derive(Subcommand, Debug)]
pub enum SimCmd {
    /// Run a scenario (see simulations/README.md) and write summary.json, messages.csv and plots
    Run {
        /// The scenario file (TOML)
        scenario: PathBuf,
        /// Seed for every random choice [default: the scenario's `seed`]
        #[arg(long)]
        seed: Option<u64>,
        /// Output directory [default: sim-out/<scenario name>-<seed>]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Run a scenario once per seed (and per combination of --set values) and aggregate every
    /// metric as mean, standard deviation and 95% confidence interval (sweep.json, sweep.csv)
    Sweep {
        /// The scenario file (TOML)
        scenario: PathBuf,
        /// Seeds to run, both ends included: A..B (1..20 is 20 runs) or one seed
        #[arg(long, value_name = "A..B")]
        seeds: String,
        /// Replace a scenario value, by key path: workload.rate_per_hour=5; several values
        /// (v1,v2,...) sweep over them; repeat --set for a grid of combinations
        #[arg(long = "set", value_name = "KEY=VALUES")]
        set: Vec<String>,
        /// Output directory [default: sim-out/<scenario name>-sweep]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContactsCmd {
    /// Add a contact by number or from an invite link, or rename an existing one
    Add {
        /// Phone number (E.164, or national with --region); optional with an invite that has one
        #[arg(required_unless_present = "invite")]
        phone: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// An instaconnect://invite/... link: links the contact's device and verified keys
        #[arg(long, value_name = "LINK")]
        invite: Option<String>,
        /// The contact's device (peer id, see `instaconnect nearby`): sends it a contact request
        #[arg(long, value_name = "PEERID")]
        peer: Option<String>,
    },
    /// Contact requests waiting for you to accept them
    Requests,
    /// Accept a contact request: keys are exchanged and you can chat
    Accept {
        /// The requester's peer id or phone number (see `instaconnect contacts requests`)
        who: String,
    },
    /// Show the safety number to compare with a contact (text and QR code)
    Safety {
        /// Phone number or contact name
        contact: String,
    },
    /// Import contacts from a vCard (.vcf, 3.0 or 4.0) or CSV (header name,phone) file
    Import {
        file: PathBuf,
        /// File format [default: from the content]
        #[arg(long, value_parser = ["vcard", "csv"])]
        format: Option<String>,
    },
    /// List contacts
    List,
    /// One contact: number, name, linked device and whether it is blocked
    Show {
        /// Phone number or contact name
        contact: String,
    },
    /// Remove a contact
    Remove {
        /// Phone number or contact name
        contact: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupsCmd {
    /// Create a group of contacts, with you as its admin
    Create {
        name: String,
        /// Contacts (phone numbers or names), comma separated
        #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
        members: Vec<String>,
    },
    /// Add contacts to a group (admins only)
    Add {
        group: String,
        #[arg(required = true, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Remove members from a group (admins only)
    Remove {
        group: String,
        #[arg(required = true, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Make a member an admin (admins only)
    Promote { group: String, member: String },
    /// Make an admin a plain member (admins only)
    Demote { group: String, member: String },
    /// Rename a group
    Rename { group: String, name: String },
    /// Leave a group
    Leave { group: String },
    /// Accept an invitation to a group
    Accept { group: String },
    /// Decline an invitation to a group
    Decline { group: String },
    /// List groups
    List,
    /// Show a group and its members
    Show { group: String },
}

#[derive(Debug, Subcommand)]
pub enum AttachmentsCmd {
    /// Write a received (or sent) attachment to a file
    Save {
        /// The message id (`instaconnect history CONTACT --json`)
        id: String,
        /// Where to write it (default: its own name, in the current directory); never
        /// overwrites a file
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LocationCmd {
    /// Set this device's current position (there is no GPS): what live locations send at each
    /// update and what `nearby` measures from. LAT,LON in decimal degrees
    Set {
        #[arg(value_name = "LAT,LON", allow_hyphen_values = true)]
        position: String,
    },
    /// Stop sharing your live location: with one contact, or with everyone
    Stop {
        /// Phone number or contact name (default: every live location)
        contact: Option<String>,
    },
    /// Show your position and the live locations you share
    Show,
}

#[derive(Subcommand, Debug)]
pub enum PrivacyCmd {
    /// Set who sees a field: phone, name, picture, status, online, receipts or location
    Set {
        field: String,
        /// everyone, contacts or nobody
        level: String,
    },
    /// Show the privacy settings
    Show,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a command finds the database.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// This CLI process opens the database itself (no node is running).
    Direct,
    /// Inside the running node, which holds the database open. Relative file paths are resolved
    /// against `cwd`, the client's working directory; without one they are refused.
    Node {
        store: &'a SledStore,
        cwd: Option<&'a Path>,
        /// The running engine (None while the network is still starting).
        driver: Option<&'a DriverHandle>,
    },
}

/// The store a command works on: opened by this process, or the node's.
pub(crate) enum StoreRef<'a> {
    Owned(SledStore),
    Shared(&'a SledStore),
}

impl std::ops::Deref for StoreRef<'_> {
    type Target = SledStore;
    fn deref(&self) -> &SledStore {
        match self {
            StoreRef::Owned(s) => s,
            StoreRef::Shared(s) => s,
        }
    }
}

pub(crate) struct Ctx<'a> {
    pub(crate) home: &'a Home,
    pub(crate) region: Option<Region>,
    pub(crate) json: bool,
    pub(crate) source: Source<'a>,
}

impl<'a> Ctx<'a> {
    /// Opens the store; remembers an explicitly given `--region`.
    pub(crate) fn open(&self) -> Result<StoreRef<'a>, Failure> {
        let store = match self.source {
            Source::Direct => StoreRef::Owned(self.home.open_existing()?),
            Source::Node { store, .. } => StoreRef::Shared(store),
        };
        if let Some(r) = &self.region {
            Book::new(&*store).set_region(r)?;
        }
        Ok(store)
    }

    /// The path to read or write for a file the user named. Messages keep showing the path as
    /// given; inside the node a relative path is taken from the client's working directory.
    pub(crate) fn file(&self, given: &Path) -> Result<PathBuf, Failure> {
        match self.source {
            Source::Node { cwd, .. } if given.is_relative() => match cwd {
                Some(cwd) => Ok(cwd.join(given)),
                None => Err(usage(anyhow!(
                    "{} is a relative path: give an absolute path (or the client's \"cwd\") to the control API",
                    given.display()
                ))),
            },
            _ => Ok(given.to_path_buf()),
        }
    }
}

impl Cli {
    /// Whether `--json` was given.
    pub fn json_output(&self) -> bool {
        self.json
    }

    /// The command's name without its values (for logs: values hold phone numbers and names).
    pub fn name(&self) -> &'static str {
        match &self.cmd {
            Cmd::Run(_) => "run",
            Cmd::Relay(_) => "relay",
            Cmd::Account(AccountCmd::Create { .. }) => "account create",
            Cmd::Account(AccountCmd::Show) => "account show",
            Cmd::Account(AccountCmd::Delete { .. }) => "account delete",
            Cmd::Profile(ProfileCmd::Set(_)) => "profile set",
            Cmd::Profile(ProfileCmd::Show) => "profile show",
            Cmd::Contacts(c) => match c {
                ContactsCmd::Add { .. } => "contacts add",
                ContactsCmd::Requests => "contacts requests",
                ContactsCmd::Accept { .. } => "contacts accept",
                ContactsCmd::Safety { .. } => "contacts safety",
                ContactsCmd::Import { .. } => "contacts import",
                ContactsCmd::List => "contacts list",
                ContactsCmd::Show { .. } => "contacts show",
                ContactsCmd::Remove { .. } => "contacts remove",
            },
            Cmd::Block { .. } => "block",
            Cmd::Unblock { .. } => "unblock",
            Cmd::Blocked => "blocked",
            Cmd::Groups(g) => match g {
                GroupsCmd::Create { .. } => "groups create",
                GroupsCmd::Add { .. } => "groups add",
                GroupsCmd::Remove { .. } => "groups remove",
                GroupsCmd::Promote { .. } => "groups promote",
                GroupsCmd::Demote { .. } => "groups demote",
                GroupsCmd::Rename { .. } => "groups rename",
                GroupsCmd::Leave { .. } => "groups leave",
                GroupsCmd::Accept { .. } => "groups accept",
                GroupsCmd::Decline { .. } => "groups decline",
                GroupsCmd::List => "groups list",
                GroupsCmd::Show { .. } => "groups show",
            },
            Cmd::Privacy(PrivacyCmd::Set { .. }) => "privacy set",
            Cmd::Privacy(PrivacyCmd::Show) => "privacy show",
            Cmd::Invite { .. } => "invite",
            Cmd::Export { .. } => "export",
            Cmd::Send { .. } => "send",
            Cmd::Attachments(AttachmentsCmd::Save { .. }) => "attachments save",
            Cmd::Inbox => "inbox",
            Cmd::History { .. } => "history",
            Cmd::Read { .. } => "read",
            Cmd::Chat { .. } => "chat",
            Cmd::Nearby => "nearby",
            Cmd::Sim(_) => "sim",
            Cmd::Location(LocationCmd::Set { .. }) => "location set",
            Cmd::Location(LocationCmd::Stop { .. }) => "location stop",
            Cmd::Location(LocationCmd::Show) => "location show",
            Cmd::Forward { .. } => "forward",
        }
    }

    /// True when the command writes to the database (an explicit `--region` is remembered).
    pub fn changes_state(&self) -> bool {
        self.region.is_some()
            || match &self.cmd {
                Cmd::Run(_) | Cmd::Relay(_) | Cmd::Blocked | Cmd::Export { .. } => false,
                Cmd::Account(a) => matches!(a, AccountCmd::Create { .. }),
                Cmd::Profile(p) => matches!(p, ProfileCmd::Set(_)),
                Cmd::Contacts(c) => !matches!(
                    c,
                    ContactsCmd::List
                        | ContactsCmd::Show { .. }
                        | ContactsCmd::Safety { .. }
                        | ContactsCmd::Requests
                ),
                Cmd::Send { .. } | Cmd::History { .. } | Cmd::Read { .. } => true,
                Cmd::Attachments(_) => false,
                Cmd::Chat { .. } => false,
                Cmd::Inbox | Cmd::Nearby | Cmd::Sim(_) => false,
                Cmd::Block { .. } | Cmd::Unblock { .. } => true,
                Cmd::Groups(g) => !matches!(g, GroupsCmd::List | GroupsCmd::Show { .. }),
                Cmd::Privacy(p) => matches!(p, PrivacyCmd::Set { .. }),
                // An invite persists the device's one-time key state.
                Cmd::Invite { .. } => true,
                Cmd::Location(l) => !matches!(l, LocationCmd::Show),
                Cmd::Forward { .. } => true,
            }
    }
}

/// The outcome of a command run inside the node, as the control API returns it: the exit code
/// the CLI exits with and what it prints.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

/// What running a command inside the node gives.
pub struct NodeRun {
    pub reply: Reply,
    /// The command succeeded and changed the database.
    pub changed: bool,
    /// The command's name, without values ("contacts add"); "-" if the line did not parse.
    pub name: &'static str,
}

/// Runs one command line (its arguments, without the program name) inside the node against its
/// open store.
pub fn run_in_node(
    store: &SledStore,
    home: &Home,
    args: &[String],
    cwd: Option<&Path>,
    driver: Option<DriverHandle>,
) -> NodeRun {
    let mut out = Out::default();
    let argv = std::iter::once("instaconnect").chain(args.iter().map(String::as_str));
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version land here too, with exit code 0 and text for stdout.
            let text = e.render().to_string();
            let (stdout, stderr) = if e.use_stderr() {
                (String::new(), text)
            } else {
                (text, String::new())
            };
            let code = u8::try_from(e.exit_code()).unwrap_or(2);
            return NodeRun {
                reply: Reply {
                    code,
                    stdout,
                    stderr,
                },
                changed: false,
                name: "-",
            };
        }
    };
    let name = cli.name();
    let result = if cli.home.is_some() {
        Err(usage(anyhow!(
            "--home is not accepted by the control API: the node serves its own data dir {}",
            home.dir.display()
        )))
    } else if matches!(cli.cmd, Cmd::Run(_)) {
        Err(usage(anyhow!(
            "`run` starts a node; the node for {} is already running",
            home.dir.display()
        )))
    } else {
        let changes = cli.changes_state();
        execute(
            cli,
            home,
            Source::Node {
                store,
                cwd,
                driver: driver.as_ref(),
            },
            &mut out,
        )
        .map(|()| changes)
    };
    let (code, changed) = match result {
        Ok(changed) => (0, changed),
        Err(f) => (crate::report(&f, &mut out), false),
    };
    NodeRun {
        reply: Reply {
            code,
            stdout: out.stdout,
            stderr: out.stderr,
        },
        changed,
        name,
    }
}

/// Runs a command (anything but `run`) against the given source, printing into `out`.
pub fn execute(cli: Cli, home: &Home, source: Source<'_>, out: &mut Out) -> Result<(), Failure> {
    let region = cli
        .region
        .as_deref()
        .map(Region::parse)
        .transpose()
        .map_err(usage)?;
    let ctx = Ctx {
        home,
        region,
        json: cli.json,
        source,
    };
    match cli.cmd {
        Cmd::Run(_) => Err(usage(anyhow!("`run` cannot run inside another command"))),
        Cmd::Relay(_) => Err(usage(anyhow!(
            "`relay` runs a relay in its own process: run it from a terminal or systemd"
        ))),
        Cmd::Account(AccountCmd::Create { phone, name }) => {
            account_create(&ctx, out, &phone, &name)
        }
        Cmd::Account(AccountCmd::Show) => account_show(&ctx, out),
        Cmd::Account(AccountCmd::Delete { .. }) => Err(Failure::Failed(anyhow!(
            "the node is running: stop it first (Ctrl-C, or kill -TERM), then run `instaconnect account delete` again"
        ))),
        Cmd::Profile(ProfileCmd::Set(set)) => profile_set(&ctx, out, set),
        Cmd::Profile(ProfileCmd::Show) => profile_show(&ctx, out),
        Cmd::Contacts(c) => contacts(&ctx, out, c),
        Cmd::Block { contact } => {
            let store = ctx.open()?;
            let b = Book::new(&*store).block(&contact, ctx.region.as_ref(), now_ms())?;
            if ctx.json {
                out.json(&json!({"blocked": b.phone, "since_ms": b.since_ms}))?;
            } else {
                out.line(format!("blocked {}", b.phone));
            }
            Ok(())
        }
        Cmd::Unblock { contact } => {
            let store = ctx.open()?;
            let b = Book::new(&*store).unblock(&contact, ctx.region.as_ref())?;
            if ctx.json {
                out.json(&json!({"unblocked": b.phone}))?;
            } else {
                out.line(format!("unblocked {}", b.phone));
            }
            Ok(())
        }
        Cmd::Blocked => {
            let store = ctx.open()?;
            let book = Book::new(&*store);
            let blocks = book.blocks()?;
            let contacts = store_contacts_by_phone(&book)?;
            if ctx.json {
                let v: Vec<_> = blocks
                    .iter()
                    .map(|b| {
                        json!({"phone": b.phone, "name": contacts.get(&b.phone).cloned().flatten(), "since_ms": b.since_ms})
                    })
                    .collect();
                out.json(&v)?;
            } else if blocks.is_empty() {
                out.line("no one is blocked");
            } else {
                let rows: Vec<Vec<String>> = blocks
                    .iter()
                    .map(|b| {
                        vec![
                            b.phone.clone(),
                            contacts
                                .get(&b.phone)
                                .cloned()
                                .flatten()
                                .unwrap_or_default(),
                            time(b.since_ms),
                        ]
                    })
                    .collect();
                out.table(&["PHONE", "NAME", "SINCE"], &rows);
            }
            Ok(())
        }
        Cmd::Groups(g) => groups(&ctx, out, g),
        Cmd::Privacy(p) => privacy(&ctx, out, p),
        Cmd::Send {
            contact,
            text,
            photo,
            video,
            voice,
            file,
            wait,
            location,
            live,
        } => {
            if wait {
                let store = ctx.open()?;
                if crate::groups::target_group(&ctx, &store, &contact)?.is_some() {
                    return Err(usage(anyhow!(
                        "--wait follows one contact's transfer; in a group each member fetches it (see `instaconnect history {contact}`)"
                    )));
                }
            }
            if location.is_some() || live.is_some() {
                return crate::location::send_location(
                    &ctx,
                    out,
                    &contact,
                    location.as_deref(),
                    live,
                );
            }
            let attached = [
                (AttachmentKind::Photo, photo),
                (AttachmentKind::Video, video),
                (AttachmentKind::Voice, voice),
                (AttachmentKind::File, file),
            ]
            .into_iter()
            .find_map(|(k, p)| p.map(|p| (k, p)));
            match attached {
                Some((kind, path)) => crate::messaging::send_attachment(
                    &ctx,
                    out,
                    &contact,
                    kind,
                    &path,
                    Some(text.join(" ")),
                ),
                None => {
                    let store = ctx.open()?;
                    match crate::groups::target_group(&ctx, &store, &contact)? {
                        Some(g) => crate::groups::send(&ctx, out, &store, &g, text.join(" ")),
                        None => {
                            drop(store);
                            crate::messaging::send(&ctx, out, &contact, text.join(" "))
                        }
                    }
                }
            }
        }
        Cmd::Attachments(AttachmentsCmd::Save { id, out: to }) => {
            crate::messaging::save_attachment(&ctx, out, &id, to.as_deref())
        }
        Cmd::Inbox => crate::messaging::inbox(&ctx, out),
        Cmd::History { contact } => {
            let store = ctx.open()?;
            match crate::groups::target_group(&ctx, &store, &contact)? {
                Some(g) => crate::groups::history(&ctx, out, &store, &g),
                None => {
                    drop(store);
                    crate::messaging::history(&ctx, out, &contact)
                }
            }
        }
        Cmd::Read { contact } => {
            let store = ctx.open()?;
            match crate::groups::target_group(&ctx, &store, &contact)? {
                Some(g) => crate::groups::read(&ctx, out, &store, &g),
                None => {
                    drop(store);
                    crate::messaging::read(&ctx, out, &contact)
                }
            }
        }
        Cmd::Chat { .. } => Err(usage(anyhow!(
            "`chat` is interactive: run it in a terminal (`instaconnect chat CONTACT`)"
        ))),
        Cmd::Nearby => crate::messaging::nearby(&ctx, out),
        Cmd::Location(l) => crate::location::location(&ctx, out, l),
        Cmd::Forward { id, contact } => crate::location::forward(&ctx, out, &id, &contact),
        Cmd::Sim(_) => Err(usage(anyhow!(
            "`sim` runs in the CLI process, not in the node: run it from a terminal"
        ))),
        Cmd::Export {
            out: file,
            include_keys,
        } => export(&ctx, out, file, include_keys),
        Cmd::Invite {
            no_phone,
            days,
            no_qr,
        } => {
            let store = ctx.open()?;
            let link =
                Book::new(&*store).invite(!no_phone, days * 24 * 60 * 60 * 1000, now_ms())?;
            if ctx.json {
                out.json(&json!({"link": link, "expires_in_days": days}))?;
            } else {
                if !no_qr {
                    out.line(qr(link.as_bytes())?);
                }
                out.line(link);
                out.line(format!(
                    "Valid for {days} days. Whoever adds it gets your keys{}.",
                    if no_phone {
                        ""
                    } else {
                        " and your phone number"
                    }
                ));
            }
            Ok(())
        }
    }
}

/// A QR code drawn with Unicode half blocks, light on dark as terminal scanners expect.
fn qr(data: &[u8]) -> Result<String, Failure> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(data).map_err(|e| anyhow!("cannot draw a QR code: {e}"))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

fn store_contacts_by_phone(
    book: &Book<'_>,
) -> Result<std::collections::BTreeMap<String, Option<String>>, Failure> {
    Ok(book
        .contacts()?
        .into_iter()
        .map(|c| (c.phone, c.name))
        .collect())
}

fn account_create(ctx: &Ctx, out: &mut Out, phone: &str, name: &str) -> Result<(), Failure> {
    let phone = Phone::parse(phone, ctx.region.as_ref()).map_err(usage)?;
    // Validate before touching the disk, so bad input creates nothing.
    if name.trim().is_empty() {
        return Err(usage(anyhow!("name must not be empty")));
    }
    if let Some(existing) = existing_account(ctx)? {
        return Err(Failure::Failed(anyhow!(
            "an account already exists in {} for {existing}; nothing was changed",
            ctx.home.dir.display(),
        )));
    }
    if let Source::Node { .. } = ctx.source {
        // Unreachable in practice: a node only runs with an account.
        return Err(Failure::Failed(anyhow!(
            "cannot create an account while the node is running"
        )));
    }
    let store = ctx.home.open_or_create()?;
    let book = Book::new(&store);
    book.create_account(&phone, name, ctx.region.as_ref(), now_ms())?;
    let keys = book.keys()?;
    let public = keys.identity.public();
    if ctx.json {
        out.json(&json!({
            "phone": phone.as_str(),
            "name": name.trim(),
            "peer_id": public.peer_id(),
            "fingerprint": public.fingerprint(),
            "home": ctx.home.dir,
        }))?;
    } else {
        out.line(format!("created account {} ({})", phone, name.trim()));
        out.line(format!("peer id:     {}", public.peer_id()));
        out.line(format!("fingerprint: {}", public.fingerprint()));
        out.line(format!("data dir:    {}", ctx.home.dir.display()));
    }
    Ok(())
}

/// The phone number of the account in this home, if there is one. A running node is asked
/// (it holds the database); otherwise the database is opened, if it exists.
fn existing_account(ctx: &Ctx) -> Result<Option<String>, Failure> {
    match ctx.source {
        Source::Node { store, .. } => {
            Ok(instaconnect_store::Store::account(store)?.map(|a| a.phone))
        }
        Source::Direct => {
            if !ctx.home.db_path().exists() {
                return Ok(None);
            }
            if let Some(phone) = crate::client::running_node_account(ctx.home)? {
                return Ok(Some(phone));
            }
            let store = ctx.home.open_existing()?;
            Ok(instaconnect_store::Store::account(&store)?.map(|a| a.phone))
        }
    }
}

fn account_show(ctx: &Ctx, out: &mut Out) -> Result<(), Failure> {
    let store = ctx.open()?;
    let book = Book::new(&*store);
    let account = book.account()?;
    let profile = book.profile()?;
    let keys = book.keys()?;
    let public = keys.identity.public();
    let region = book.region(None)?;
    if ctx.json {
        out.json(&json!({
            "phone": account.phone,
            "name": profile.name,
            "status": profile.status,
            "peer_id": public.peer_id(),
            "fingerprint": public.fingerprint(),
            "region": region.map(|r| r.to_string()),
            "created_at_ms": account.created_at_ms,
        }))?;
    } else {
        out.line(format!("phone:       {}", account.phone));
        out.line(format!("name:        {}", profile.name));
        out.line(format!("status:      {}", profile.status));
        out.line(format!("peer id:     {}", public.peer_id()));
        out.line(format!("fingerprint: {}", public.fingerprint()));
        if let Some(r) = region {
            out.line(format!("region:      {r}"));
        }
        out.line(format!("created:     {}", time(account.created_at_ms)));
    }
    Ok(())
}

/// Reads a file the user named, at most `limit` bytes. Messages show the path as given.
fn read_limited(ctx: &Ctx, given: &Path, limit: u64, what: &str) -> Result<Vec<u8>, Failure> {
    let path = ctx.file(given)?;
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("cannot read {what} {}", given.display()))
        .map_err(usage)?;
    if !meta.is_file() {
        return Err(usage(anyhow!("{what} {} is not a file", given.display())));
    }
    if meta.len() > limit {
        return Err(usage(anyhow!(
            "{what} {} is too large: {} bytes (at most {limit})",
            given.display(),
            meta.len()
        )));
    }
    std::fs::read(&path)
        .with_context(|| format!("cannot read {what} {}", given.display()))
        .map_err(usage)
}

fn profile_set(ctx: &Ctx, out: &mut Out, set: ProfileSet) -> Result<(), Failure> {
    if set.name.is_none() && set.status.is_none() && set.picture.is_none() && !set.remove_picture {
        return Err(usage(anyhow!(
            "nothing to change (expected --name, --status, --picture or --remove-picture)"
        )));
    }
    let picture = match (&set.picture, set.remove_picture) {
        (Some(p), _) => Some(Some(read_limited(
            ctx,
            p,
            MAX_PICTURE_FILE_BYTES,
            "picture",
        )?)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    let store = ctx.open()?;
    let p = Book::new(&*store).set_profile(
        set.name.as_deref(),
        set.status.as_deref(),
        picture,
        now_ms(),
    )?;
    print_profile(ctx, out, &p)
}

fn profile_show(ctx: &Ctx, out: &mut Out) -> Result<(), Failure> {
    let store = ctx.open()?;
    let p = Book::new(&*store).profile()?;
    print_profile(ctx, out, &p)
}

fn print_profile(
    ctx: &Ctx,
    out: &mut Out,
    p: &instaconnect_wire::records::Profile,
) -> Result<(), Failure> {
    if ctx.json {
        out.json(&json!({
            "name": p.name,
            "status": p.status,
            "picture": p.picture.as_ref().map(|pic| json!({
                "mime": pic.format.mime(),
                "width": pic.width,
                "height": pic.height,
                "bytes": pic.bytes.len(),
                "thumbnail_bytes": pic.thumbnail_png.len(),
            })),
            "updated_at_ms": p.updated_at_ms,
        }))?;
    } else {
        out.line(format!("name:    {}", p.name));
        out.line(format!("status:  {}", p.status));
        match &p.picture {
            Some(pic) => out.line(format!(
                "picture: {} {}x{} ({} bytes, thumbnail {} bytes)",
                pic.format.mime(),
                pic.width,
                pic.height,
                pic.bytes.len(),
                pic.thumbnail_png.len()
            )),
            None => out.line("picture: none"),
        }
    }
    Ok(())
}

fn contacts(ctx: &Ctx, out: &mut Out, cmd: ContactsCmd) -> Result<(), Failure> {
    match cmd {
        ContactsCmd::Requests => crate::messaging::requests(ctx, out),
        ContactsCmd::Accept { who } => crate::messaging::accept(ctx, out, &who),
        ContactsCmd::Add {
            phone,
            name,
            invite,
            peer,
        } => {
            if let Some(peer) = &peer {
                crate::messaging::check_peer_id(peer)?;
                if invite.is_some() {
                    return Err(usage(anyhow!(
                        "give either --invite or --peer (an invite already names the device)"
                    )));
                }
            }
            let store = ctx.open()?;
            let book = Book::new(&*store);
            let region = book.region(ctx.region.as_ref())?;
            let phone = phone
                .as_deref()
                .map(|p| Phone::parse(p, region.as_ref()))
                .transpose()
                .map_err(usage)?;
            let (c, new) = match (&invite, &phone) {
                (Some(link), _) => {
                    book.add_contact_from_invite(link, phone.as_ref(), name.as_deref(), now_ms())?
                }
                (None, Some(p)) => book.add_contact(p, name.as_deref(), now_ms())?,
                (None, None) => return Err(usage(anyhow!("give a phone number or --invite LINK"))),
            };
            let requested = match &peer {
                Some(peer) => {
                    crate::messaging::engine_command(
                        ctx,
                        &store,
                        instaconnect_core::engine::Command::RequestContact {
                            phone: c.phone.clone(),
                            peer: peer.clone(),
                        },
                    )?;
                    true
                }
                None => false,
            };
            let c = instaconnect_store::Store::contact(&*store, &c.phone)?.unwrap_or(c);
            if requested && !ctx.json {
                out.note(format!(
                    "contact request for {} queued; it is sent when the node reaches that device",
                    c.phone
                ));
            }
            if ctx.json {
                out.json(&json!({
                    "phone": c.phone,
                    "name": c.name,
                    "peer_id": c.peer_id,
                    "verified_keys": c.identity_key.is_some(),
                    "added": new,
                }))?;
            } else {
                let verb = if new { "added" } else { "updated" };
                match &c.name {
                    Some(n) => out.line(format!("{verb} {} ({n})", c.phone)),
                    None => out.line(format!("{verb} {}", c.phone)),
                }
            }
            Ok(())
        }
        ContactsCmd::Import { file, format } => {
            let bytes = read_limited(ctx, &file, MAX_IMPORT_BYTES, "contacts file")?;
            let text = String::from_utf8(bytes).map_err(|e| {
                usage(anyhow!(
                    "cannot import {}: not UTF-8 text (byte {}); expected a vCard (.vcf) or CSV file",
                    file.display(),
                    e.utf8_error().valid_up_to()
                ))
            })?;
            let is_vcard = match format.as_deref() {
                Some("vcard") => true,
                Some(_) => false,
                None => text
                    .trim_start_matches('\u{feff}')
                    .trim_start()
                    .to_ascii_uppercase()
                    .starts_with("BEGIN:VCARD"),
            };
            let entries = if is_vcard {
                let parsed = instaconnect_core::vcard::parse_vcards(&text)
                    .map_err(|e| usage(anyhow!("cannot import {}: {e}", file.display())))?;
                ImportEntry::from_vcards(parsed)
            } else {
                let parsed = instaconnect_core::csv_import::parse_csv(&text)
                    .map_err(|e| usage(anyhow!("cannot import {}: {e}", file.display())))?;
                ImportEntry::from_csv(parsed)
            };
            let store = ctx.open()?;
            let summary = Book::new(&*store).import(entries, ctx.region.as_ref(), now_ms())?;
            print_import(ctx, out, &summary)
        }
        ContactsCmd::Show { contact } => {
            let store = ctx.open()?;
            let book = Book::new(&*store);
            let c = book.resolve_contact(&contact, ctx.region.as_ref())?;
            let blocked = instaconnect_store::Store::block(&*store, &c.phone)?.is_some();
            let linked = c.card.is_some();
            // The relays where the contact opened a mailbox for us (messages reach them there
            // while their device is away).
            let relays: Vec<String> = instaconnect_store::Store::contact_mailboxes(&*store)?
                .into_iter()
                .filter(|m| m.phone == c.phone)
                .flat_map(|m| m.boxes.into_iter().map(|b| b.relay))
                .collect();
            if ctx.json {
                out.json(&json!({
                    "phone": c.phone,
                    "name": c.name,
                    "peer_id": c.peer_id,
                    "linked": linked,
                    "blocked": blocked,
                    "added_at_ms": c.added_at_ms,
                    "relays": relays,
                }))?;
            } else {
                out.line(format!("phone:   {}", c.phone));
                out.line(format!("name:    {}", c.name.as_deref().unwrap_or("-")));
                out.line(format!(
                    "device:  {}{}",
                    c.peer_id.as_deref().unwrap_or("-"),
                    match (c.peer_id.is_some(), linked) {
                        (_, true) => " (keys exchanged)",
                        (true, false) => " (waiting for them to accept)",
                        (false, _) => "",
                    }
                ));
                if !relays.is_empty() {
                    out.line(format!("relays:  {}", relays.join(", ")));
                }
                if blocked {
                    out.line("blocked");
                }
            }
            Ok(())
        }
        ContactsCmd::List => {
            let store = ctx.open()?;
            let book = Book::new(&*store);
            let list = book.contacts()?;
            let blocked: std::collections::BTreeSet<String> =
                book.blocks()?.into_iter().map(|b| b.phone).collect();
            if ctx.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|c| {
                        json!({
                            "phone": c.phone,
                            "name": c.name,
                            "peer_id": c.peer_id,
                            "blocked": blocked.contains(&c.phone),
                            "added_at_ms": c.added_at_ms,
                        })
                    })
                    .collect();
                out.json(&v)?;
            } else if list.is_empty() {
                out.line("no contacts yet (add one with `instaconnect contacts add +919812345678 --name NAME`)");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        vec![
                            c.phone.clone(),
                            c.name.clone().unwrap_or_default(),
                            if blocked.contains(&c.phone) {
                                "blocked"
                            } else {
                                ""
                            }
                            .to_string(),
                        ]
                    })
                    .collect();
                out.table(&["PHONE", "NAME", ""], &rows);
            }
            Ok(())
        }
        ContactsCmd::Safety { contact } => {
            let store = ctx.open()?;
            let (c, sn) = Book::new(&*store).safety_number(&contact, ctx.region.as_ref())?;
            let qr_hex: String = sn.qr_payload.iter().map(|b| format!("{b:02x}")).collect();
            if ctx.json {
                out.json(
                    &json!({"phone": c.phone, "safety_number": sn.digits, "qr_payload_hex": qr_hex}),
                )?;
            } else {
                out.line(format!(
                    "safety number with {} {}:",
                    c.phone,
                    c.name.as_deref().unwrap_or("")
                ));
                out.line(sn.digits);
                out.line(qr(&sn.qr_payload)?);
                out.line("It matches on both phones only if nobody is in between.");
            }
            Ok(())
        }
        ContactsCmd::Remove { contact } => {
            let store = ctx.open()?;
            let c = Book::new(&*store).remove_contact(&contact, ctx.region.as_ref())?;
            if ctx.json {
                out.json(&json!({"removed": c.phone}))?;
            } else {
                out.line(format!("removed {}", c.phone));
            }
            Ok(())
        }
    }
}

fn print_import(ctx: &Ctx, out: &mut Out, s: &ImportSummary) -> Result<(), Failure> {
    if ctx.json {
        out.json(s)?;
        return Ok(());
    }
    out.line(format!(
        "imported: {} added, {} updated, {} unchanged, {} merged duplicates, {} skipped",
        s.added.len(),
        s.updated.len(),
        s.unchanged,
        s.merged,
        s.skipped.len()
    ));
    for c in &s.added {
        out.line(format!(
            "  added   {} {}",
            c.phone,
            c.name.as_deref().unwrap_or("")
        ));
    }
    for c in &s.updated {
        out.line(format!(
            "  updated {} {}",
            c.phone,
            c.name.as_deref().unwrap_or("")
        ));
    }
    for k in &s.skipped {
        out.line(format!("  skipped line {}: {}", k.line, k.reason));
    }
    Ok(())
}

fn new_group_id() -> GroupId {
    GroupId(rand::random())
}

fn groups(ctx: &Ctx, out: &mut Out, cmd: GroupsCmd) -> Result<(), Failure> {
    let store = ctx.open()?;
    let book = Book::new(&*store);
    let r = ctx.region.as_ref();
    let now = now_ms();
    let g = match cmd {
        GroupsCmd::Create { name, members } => {
            let g = book.create_group(&name, &members, r, new_group_id(), now)?;
            crate::groups::sync(ctx, out, &store, &g)?;
            g
        }
        GroupsCmd::Add { group, members } => {
            let g = book.add_members(&group, &members, r, now)?;
            crate::groups::sync(ctx, out, &store, &g)?;
            g
        }
        GroupsCmd::Remove { group, members } => {
            let g = book.remove_members(&group, &members, r, now)?;
            crate::groups::sync(ctx, out, &store, &g)?;
            g
        }
        GroupsCmd::Promote { group, member } => {
            let g = book.set_role(&group, &member, Role::Admin, r, now)?;
            crate::groups::sync(ctx, out, &store, &g)?;
            g
        }
        GroupsCmd::Demote { group, member } => {
            let g = book.set_role(&group, &member, Role::Member, r, now)?;
            crate::groups::sync(ctx, out, &store, &g)?;
            g
        }
        GroupsCmd::Rename { group, name } => {
            let g = book.rename_group(&group, &name, now)?;
            crate::groups::sync(ctx, out, &store, &g)?;
            g
        }
        GroupsCmd::Leave { group } => {
            let g = book.leave_group(&group, now)?;
            crate::groups::leave(ctx, &store, &g)?;
            g
        }
        GroupsCmd::Accept { group } => return crate::groups::answer(ctx, out, &group, true),
        GroupsCmd::Decline { group } => return crate::groups::answer(ctx, out, &group, false),
        GroupsCmd::Show { group } => book.resolve_group(&group)?,
        GroupsCmd::List => {
            let list = book.groups()?;
            if ctx.json {
                let v = list
                    .iter()
                    .map(|g| Ok(GroupOut::with_sync(g, store.group_sync(&g.id)?.as_ref())))
                    .collect::<Result<Vec<GroupOut>, Failure>>()?;
                out.json(&v)?;
            } else if list.is_empty() {
                out.line("no groups yet");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|g| {
                        vec![
                            g.id.to_hex()[..8].to_string(),
                            g.name.clone(),
                            g.members.len().to_string(),
                            crate::groups::status(&store, g).to_string(),
                        ]
                    })
                    .collect();
                out.table(&["ID", "NAME", "MEMBERS", ""], &rows);
            }
            return Ok(());
        }
    };
    print_group(ctx, out, &book, &store, &g)
}

fn print_group(
    ctx: &Ctx,
    out: &mut Out,
    book: &Book<'_>,
    store: &SledStore,
    g: &GroupRecord,
) -> Result<(), Failure> {
    if ctx.json {
        out.json(&GroupOut::with_sync(g, store.group_sync(&g.id)?.as_ref()))?;
        return Ok(());
    }
    let me = book.account()?.phone;
    let names = store_contacts_by_phone(book)?;
    out.line(format!("group {} ({})", g.name, g.id.to_hex()));
    match crate::groups::status(store, g) {
        "left" => out.line("you are no longer a member of this group"),
        "invited" => out
            .line("you are invited: `instaconnect groups accept` or `instaconnect groups decline`"),
        _ => {}
    }
    let joined = crate::groups::joined(store, g);
    let rows: Vec<Vec<String>> = g
        .members
        .iter()
        .map(|m| {
            let name = if m.phone == me {
                "you".to_string()
            } else {
                names.get(&m.phone).cloned().flatten().unwrap_or_default()
            };
            let state = if joined.contains(&m.phone) {
                "joined"
            } else {
                "invited"
            };
            vec![
                m.phone.clone(),
                name,
                role_str(m.role).to_string(),
                state.to_string(),
            ]
        })
        .collect();
    out.table(&["PHONE", "NAME", "ROLE", "STATE"], &rows);
    Ok(())
}

fn privacy(ctx: &Ctx, out: &mut Out, cmd: PrivacyCmd) -> Result<(), Failure> {
    let store = ctx.open()?;
    let book = Book::new(&*store);
    let p = match cmd {
        PrivacyCmd::Set { field, level } => book.set_privacy(&field, &level)?,
        PrivacyCmd::Show => book.privacy()?,
    };
    let pairs: Vec<(&str, &str)> = PRIVACY_FIELDS
        .iter()
        .filter_map(|f| privacy_get(&p, f).map(|v| (*f, visibility_str(v))))
        .collect();
    if ctx.json {
        let m: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        out.json(&m)?;
    } else {
        let rows: Vec<Vec<String>> = pairs
            .iter()
            .map(|(k, v)| vec![k.to_string(), v.to_string()])
            .collect();
        out.table(&["FIELD", "VISIBLE TO"], &rows);
    }
    Ok(())
}

fn export(
    ctx: &Ctx,
    out: &mut Out,
    file: Option<PathBuf>,
    include_keys: bool,
) -> Result<(), Failure> {
    let store = ctx.open()?;
    let book = Book::new(&*store);
    let doc = instaconnect_core::export::export(&book, include_keys, now_ms())?;
    let text = serde_json::to_string_pretty(&doc).context("cannot encode the export")?;
    match file {
        None => out.line(text),
        Some(given) => {
            if given.file_name().is_none() {
                return Err(usage(anyhow!(
                    "--out {} is not a file path",
                    given.display()
                )));
            }
            let path = ctx.file(&given)?;
            crate::files::write_private_atomically(&path, text.as_bytes())
                .map_err(|e| Failure::Failed(anyhow!("cannot write {}: {e}", given.display())))?;
            if !ctx.json {
                out.note(format!(
                    "exported {} contacts, {} groups, {} blocked to {}{}",
                    doc.contacts.len(),
                    doc.groups.len(),
                    doc.blocked.len(),
                    given.display(),
                    if include_keys {
                        " (with secret keys: keep it safe)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    Ok(())
}
