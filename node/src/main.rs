//! `instaconnect`: the InstaConnect Mesh command line.

mod account_delete;
mod chat;
mod cli;
mod client;
mod config;
mod control_file;
mod daemon;
mod files;
mod groups;
mod home;
mod location;
mod messaging;
mod output;
mod progress;
mod relay;
mod sim;

use std::process::ExitCode;

use clap::Parser;

/// How a command failed: the user gave bad input (exit 2) or something failed (exit 1).
#[derive(Debug)]
pub enum Failure {
    Usage(anyhow::Error),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

impl From<instaconnect_core::book::BookError> for Failure {
    fn from(e: instaconnect_core::book::BookError) -> Self {
        if e.is_invalid_input() {
            Failure::Usage(e.into())
        } else {
            Failure::Failed(e.into())
        }
    }
}

impl From<instaconnect_store::StoreError> for Failure {
    fn from(e: instaconnect_store::StoreError) -> Self {
        Failure::Failed(e.into())
    }
}

/// A bad value given by the user.
pub fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(e.into())
}

/// Writes a failure as the CLI shows it (`error: ...` on stderr) and returns its exit code.
pub fn report(f: &Failure, out: &mut output::Out) -> u8 {
    match f {
        Failure::Usage(e) => {
            out.note(format!("error: {e:#}"));
            2
        }
        Failure::Failed(e) => {
            out.note(format!("error: {e:#}"));
            1
        }
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let mut out = output::Out::default();
    let code = match main_with(cli, &mut out) {
        Ok(code) => code,
        Err(f) => report(&f, &mut out),
    };
    out.print();
    ExitCode::from(code)
}

/// `run` starts the node. Any other command goes to the running node if there is one (it holds
/// the database), else runs here.
fn main_with(cli: cli::Cli, out: &mut output::Out) -> Result<u8, Failure> {
    if let cli::Cmd::Sim(cmd) = &cli.cmd {
        return sim::run(cmd, cli.json_output(), out);
    }
    if let cli::Cmd::Relay(args) = cli.cmd {
        relay::run(args)?;
        return Ok(0);
    }
    let home = home::Home::resolve(cli.home.clone())?;
    if let cli::Cmd::Run(args) = cli.cmd {
        daemon::run(&home, args)?;
        return Ok(0);
    }
    if let cli::Cmd::Chat { contact } = &cli.cmd {
        return chat::run(&home, contact);
    }
    if let cli::Cmd::Send { wait: true, .. } = &cli.cmd {
        return progress::send_and_wait(&home);
    }
    // `account delete` runs only here, with the node stopped: it wipes the node's data dir.
    if let cli::Cmd::Account(cli::AccountCmd::Delete { force, yes }) = cli.cmd {
        return account_delete::run(&home, force, yes, cli.json_output(), out);
    }
    // `account create` is never forwarded: it only reads the existing account from a node.
    let is_create = matches!(cli.cmd, cli::Cmd::Account(cli::AccountCmd::Create { .. }));
    if !is_create {
        if let Some(reply) = client::forward_if_running(&home)? {
            out.stdout = reply.stdout;
            out.stderr = reply.stderr;
            return Ok(reply.code);
        }
    }
    cli::execute(cli, &home, cli::Source::Direct, out)?;
    Ok(0)
}
