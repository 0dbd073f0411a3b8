//! `instaconnect`: the InstaConnect Mesh command line.

mod cli;
mod home;
mod output;

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

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
