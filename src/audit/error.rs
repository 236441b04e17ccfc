//! Errors of the audit writer and of the verifier's file handling.

use std::io;
use std::path::PathBuf;

/// Class of an [`AuditError`], for the caller that maps errors to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A named file does not exist.
    NotFound,
    /// Reading or writing a file failed.
    Io,
    /// The audit file disagrees with the ledger head or does not chain: nothing was
    /// written, and an operator must look before anything runs again.
    Inconsistent,
    /// A caller passed a record or state file that this module cannot accept.
    InvalidInput,
    /// The checkpoint signer returned an error.
    Signer,
}

/// Error of the audit writer, of checkpoint signing, or of opening and reading the files
/// that `verify` needs. A chain that fails verification is not an error: `verify`
/// returns it in its report.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: file not found")]
    NotFound { path: PathBuf },

    #[error("{path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(
        "{path}: audit file is {found_len} bytes, shorter than the ledger head \
         (seq {seq}, {expected_len} bytes); it was truncated or replaced"
    )]
    Truncated {
        path: PathBuf,
        seq: u64,
        expected_len: u64,
        found_len: u64,
    },

    #[error("{0}")]
    Diverged(Box<Divergence>),

    #[error("invalid audit record: {0}")]
    InvalidRecord(String),

    #[error("{path}: invalid verifier state file: {reason}")]
    InvalidState { path: PathBuf, reason: String },

    #[error("checkpoint signing failed: {0}")]
    Signer(String),
}

/// Line of the audit file that does not match the ledger head or does not chain
/// from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{path}: line at byte {offset}: seq={seq}: audit file diverged from the ledger head: \
     {reason} (expected {expected}, found {found})"
)]
pub struct Divergence {
    pub path: PathBuf,
    /// Byte offset of the line's first byte.
    pub offset: u64,
    /// 1-based line number, when the writer has it. The writer reads only the
    /// file's tail, so for lines after the genesis line it names the byte offset only.
    pub line: Option<u64>,
    pub seq: u64,
    pub reason: String,
    pub expected: String,
    pub found: String,
}

impl AuditError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuditError::NotFound { .. } => ErrorKind::NotFound,
            AuditError::Io { .. } => ErrorKind::Io,
            AuditError::Truncated { .. } | AuditError::Diverged(_) => ErrorKind::Inconsistent,
            AuditError::InvalidRecord(_) | AuditError::InvalidState { .. } => {
                ErrorKind::InvalidInput
            }
            AuditError::Signer(_) => ErrorKind::Signer,
        }
    }

    /// Wraps an I/O error, turning `NotFound` into [`AuditError::NotFound`].
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        let path = path.into();
        if source.kind() == io::ErrorKind::NotFound {
            AuditError::NotFound { path }
        } else {
            AuditError::Io {
                path,
                action,
                source,
            }
        }
    }
}
