//! `keyrot approve`: the approver's side of an emergency. Signs an approval document
//! with the approver's software P-256 key.
//!
//! It needs neither the HSM nor the ledger, and runs without a configuration file.
//! When one is found, the domain is checked against it. The document is printed or
//! written to a new file with mode 0600. The private key is read from a file that
//! must not be readable by group or others, and it never appears in any output.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::approval::{self, Approval, ApprovalAction, KeyFileError, SignedApproval};
use crate::audit::Actor;
use crate::config::Duration;
use crate::error::{Error, Result};

use super::{Context, Outcome};

/// Approval request of an approver: the claims, the signing key and the output.
#[derive(Debug, Clone)]
pub struct ApproveRequest {
    pub domain: String,
    pub action: ApprovalAction,
    pub version: Option<u32>,
    pub reason: String,
    /// Account name of the only user who may use the approval.
    pub requester: Option<String>,
    /// Approver name; defaults to the account name of the real uid.
    pub approver: Option<String>,
    pub expires_in: Duration,
    pub key: PathBuf,
    /// File to create; `None` prints the document on stdout.
    pub out: Option<PathBuf>,
}

/// Signs an approval. Reads the key file and, if given, creates the output file.
pub fn approve(ctx: Option<&Context>, request: &ApproveRequest, run_id: &str) -> Result<Outcome> {
    if let Some(ctx) = ctx {
        super::rotate::domain_settings(ctx, &request.domain)?;
    }
    let approver = match &request.approver {
        Some(name) => name.clone(),
        None => Actor::current().user,
    };
    let lifetime = request.expires_in.seconds();
    if lifetime <= 0 || lifetime > approval::MAX_LIFETIME_SECONDS {
        return Err(Error::Usage(format!(
            "invalid --expires-in {}: must be longer than zero and at most {}d",
            request.expires_in,
            approval::MAX_LIFETIME_SECONDS / 86_400
        )));
    }
    let key = approval::read_signing_key(&request.key).map_err(key_error)?;

    let issued_at = super::now_micros().div_euclid(1_000_000);
    let claims = Approval {
        domain: request.domain.clone(),
        action: request.action,
        version: request.version,
        reason: request.reason.clone(),
        requester: request.requester.clone(),
        approver,
        issued_at,
        expires_at: issued_at + lifetime,
        nonce: approval::new_nonce(),
    };
    let signed = claims.sign(&key).map_err(|e| Error::Usage(e.to_string()))?;
    let text = signed.to_json();

    let mut outcome = Outcome::new("approved")
        .field("domain", &signed.approval.domain)
        .field("action", signed.approval.action);
    if let Some(version) = signed.approval.version {
        outcome = outcome.field("version", version);
    }
    outcome = outcome
        .field("approver", &signed.approval.approver)
        .field(
            "expires_at",
            approval::format_time(signed.approval.expires_at),
        )
        .field("nonce", &signed.approval.nonce);
    match &request.out {
        Some(path) => {
            write_new_private(path, &text)?;
            outcome = outcome.field("out", path.display());
        }
        None => {
            outcome.report = text.lines().map(str::to_string).collect();
            outcome
                .data
                .insert("approval".into(), document_value(&signed));
        }
    }
    Ok(outcome.field("run_id", run_id))
}

fn document_value(signed: &SignedApproval) -> serde_json::Value {
    serde_json::from_str(&signed.to_json()).unwrap_or_default()
}

fn key_error(error: KeyFileError) -> Error {
    match error {
        KeyFileError::Missing(path) => Error::NoInput {
            what: "approver key file",
            path,
        },
        KeyFileError::Insecure { .. } => Error::NoPermission(error.to_string()),
        KeyFileError::Invalid { .. } => Error::Usage(error.to_string()),
        KeyFileError::Read { path, source } => Error::Io {
            action: "failed to read approver key file",
            path,
            source,
        },
    }
}

/// Creates `path` with mode 0600 and writes `text`; an existing file is not replaced,
/// so an approval already handed out is never overwritten.
fn write_new_private(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Usage(format!(
                    "approval file {} already exists\nhint: choose another --out path",
                    path.display()
                ))
            } else {
                Error::Io {
                    action: "failed to create approval file",
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let io_error = |source| Error::Io {
        action: "failed to write approval file",
        path: path.to_path_buf(),
        source,
    };
    file.write_all(text.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    Ok(())
}
