use std::path::PathBuf;

/// Everything that can go wrong loading or running a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario file is not valid TOML.
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    /// A key of the scenario has a bad value, is unknown, or is missing.
    #[error("{file}: `{key}`: {message}")]
    Scenario {
        file: String,
        key: String,
        message: String,
    },
    /// The scenario asks for something the simulator cannot do yet.
    #[error("{file}: `{key}`: {message}")]
    Unsupported {
        file: String,
        key: String,
        message: String,
    },
    /// A line of a contact trace is malformed.
    #[error("{file}:{line}: {message}")]
    Trace {
        file: String,
        line: usize,
        message: String,
    },
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Creating a device's account or engine failed.
    #[error("seed {seed}: setting up device {node}: {message}")]
    Setup {
        seed: u64,
        node: u32,
        message: String,
    },
    /// The run produced more simultaneous events than the simulator keeps.
    #[error(
        "seed {seed}: more than {limit} events queued at {at_ms} ms; the scenario is too large"
    )]
    Overloaded { seed: u64, limit: usize, at_ms: u64 },
    /// An end-of-run check failed: a bug in the engine or the simulator.
    #[error("invariant violated with seed {seed} (rerun with this seed to reproduce): {}", violations.join("; "))]
    Invariant { seed: u64, violations: Vec<String> },
    /// A command-line value (`--seeds`, `--set`) is malformed.
    #[error("{option} {value}: {message}")]
    Argument {
        option: &'static str,
        value: String,
        message: String,
    },
    #[error("could not draw {what}: {message}")]
    Plot { what: &'static str, message: String },
}

impl SimError {
    /// Maps an IO error of `action` on `path` (for `map_err`).
    pub fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> SimError {
        let path = path.to_path_buf();
        move |source| SimError::Io {
            action,
            path,
            source,
        }
    }
}
