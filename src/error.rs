//! The error every command returns, and the one mapping from errors to exit codes.
//!
//! The exit codes are the scheduler contract: Control-M rules act on them, so a
//! variant's code changes only as a breaking change.

use std::path::PathBuf;

use crate::audit::{AuditError, ErrorKind as AuditErrorKind};
use crate::config::{ConfigError, PinError};
use crate::hsm::{HsmError, HsmErrorKind};
use crate::ledger::LedgerError;

/// Exit codes, after BSD `sysexits.h` where one fits.
pub mod code {
    pub const OK: u8 = 0;
    pub const LOCKED: u8 = 10;
    pub const RATE_LIMITED: u8 = 11;
    pub const APPROVAL_REQUIRED: u8 = 12;
    pub const INCONSISTENT: u8 = 20;
    pub const AUDIT_INVALID: u8 = 21;
    pub const USAGE: u8 = 64;
    pub const NOINPUT: u8 = 66;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const IOERR: u8 = 74;
    pub const TEMPFAIL: u8 = 75;
    pub const NOPERM: u8 = 77;
    pub const CONFIG: u8 = 78;

    /// Every code keyrot can exit with, with its name.
    pub const ALL: [(u8, &str); 14] = [
        (OK, "OK"),
        (LOCKED, "LOCKED"),
        (RATE_LIMITED, "RATE_LIMITED"),
        (APPROVAL_REQUIRED, "APPROVAL_REQUIRED"),
        (INCONSISTENT, "INCONSISTENT"),
        (AUDIT_INVALID, "AUDIT_INVALID"),
        (USAGE, "USAGE"),
        (NOINPUT, "NOINPUT"),
        (UNAVAILABLE, "UNAVAILABLE"),
        (SOFTWARE, "SOFTWARE"),
        (IOERR, "IOERR"),
        (TEMPFAIL, "TEMPFAIL"),
        (NOPERM, "NOPERM"),
        (CONFIG, "CONFIG"),
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {path} not found")]
    NoInput { what: &'static str, path: PathBuf },
    #[error(
        "domain {domain} is locked by another run ({holder})\nhint: wait for that run to finish, then rerun"
    )]
    Locked { domain: String, holder: String },
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    ApprovalRequired(String),
    #[error("{0}")]
    Inconsistent(String),
    /// `verify` found drift; the outcome carries every finding for the result.
    #[error("{summary}")]
    Findings {
        summary: String,
        outcome: Box<crate::workflow::Outcome>,
    },
    #[error("{}", .0.to_text().trim_end())]
    AuditInvalid(Box<crate::audit::Report>),
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "interrupted by {signal} after step {step}\nhint: rerun with --run-id {run_id} to finish; a run with another run id abandons a rotation that has not yet switched keys and finishes one that has"
    )]
    Interrupted {
        signal: String,
        step: String,
        run_id: String,
    },
    #[error("{0}")]
    NoPermission(String),
    #[error("internal error: {0}")]
    Software(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Short stable name of the error kind, for the result line.
    pub fn kind_name(&self) -> &'static str {
        let code = exit_code(self);
        code::ALL
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, name)| *name)
            .unwrap_or("SOFTWARE")
    }
}

/// Maps an error to the exit code the scheduler acts on. This is the only mapping.
pub fn exit_code(error: &Error) -> u8 {
    match error {
        Error::Usage(_) => code::USAGE,
        Error::Config(_) => code::CONFIG,
        Error::NoInput { .. } => code::NOINPUT,
        Error::Locked { .. } => code::LOCKED,
        Error::RateLimited(_) => code::RATE_LIMITED,
        Error::ApprovalRequired(_) => code::APPROVAL_REQUIRED,
        Error::Inconsistent(_) | Error::Findings { .. } => code::INCONSISTENT,
        Error::AuditInvalid(_) => code::AUDIT_INVALID,
        Error::Hsm(e) => match e.kind() {
            HsmErrorKind::Unavailable => code::UNAVAILABLE,
            HsmErrorKind::Login => code::NOPERM,
            HsmErrorKind::Inconsistent => code::INCONSISTENT,
        },
        Error::Ledger(e) => match e {
            LedgerError::Missing { .. } => code::NOINPUT,
            LedgerError::Busy { .. } | LedgerError::DiskFull { .. } => code::TEMPFAIL,
            LedgerError::TooNew { .. } => code::CONFIG,
            LedgerError::Corrupt { .. } => code::INCONSISTENT,
            LedgerError::Sqlite { .. } | LedgerError::Create { .. } => code::IOERR,
        },
        Error::Audit(e) => match e.kind() {
            AuditErrorKind::NotFound => code::NOINPUT,
            AuditErrorKind::Io => code::IOERR,
            AuditErrorKind::Inconsistent => code::INCONSISTENT,
            AuditErrorKind::InvalidInput => code::USAGE,
            AuditErrorKind::Signer => code::UNAVAILABLE,
        },
        Error::Pin(e) => match e {
            PinError::Missing(_) => code::CONFIG,
            PinError::Unreadable(_) | PinError::Insecure(_) => code::NOPERM,
        },
        Error::Io { source, .. } => {
            if source.raw_os_error() == Some(28) {
                // ENOSPC: rerunning after space is freed is safe.
                code::TEMPFAIL
            } else {
                code::IOERR
            }
        }
        Error::Interrupted { .. } => code::TEMPFAIL,
        Error::NoPermission(_) => code::NOPERM,
        Error::Software(_) => code::SOFTWARE,
    }
}
