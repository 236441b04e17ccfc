//! `keyrot audit-verify`: checks the audit chain, its checkpoint signatures, its tail
//! against the ledger and against the last verified checkpoint.
//!
//! Read-only: it never writes the audit file or the ledger. The only file it may
//! write is the `--state` file, and only after a full successful pass.

use std::path::{Path, PathBuf};

use crate::audit::{self, AuditHead, VerifyOptions};
use crate::error::{Error, Result};
use crate::ledger::Ledger;

use super::Outcome;

/// Audit file to verify and the anchors to check it against.
#[derive(Debug, Clone, Default)]
pub struct AuditVerifyRequest {
    pub path: PathBuf,
    pub ledger: Option<PathBuf>,
    pub pubkey: Option<PathBuf>,
    pub state: Option<PathBuf>,
}

/// Verifies the chain; a chain that fails is `Error::AuditInvalid` carrying the report.
pub fn audit_verify(request: &AuditVerifyRequest, run_id: &str) -> Result<Outcome> {
    let pubkey = match &request.pubkey {
        Some(path) => Some(
            audit::read_public_key_pem(path).map_err(|e| match e.kind() {
                audit::ErrorKind::NotFound => Error::NoInput {
                    what: "public key",
                    path: path.clone(),
                },
                _ => Error::Audit(e),
            })?,
        ),
        None => None,
    };
    let ledger_head = match &request.ledger {
        Some(path) => Some(read_ledger_head(path)?),
        None => None,
    };
    if !request.path.exists() {
        return Err(Error::NoInput {
            what: "audit file",
            path: request.path.clone(),
        });
    }
    let options = VerifyOptions {
        pubkey,
        ledger_head,
        state: request.state.clone(),
    };
    let report = audit::verify(&request.path, &options)?;
    if !report.is_valid() {
        return Err(Error::AuditInvalid(Box::new(report)));
    }

    let mut outcome = Outcome::new("valid")
        .field("file", request.path.display())
        .field("lines", report.lines_verified)
        .field("checkpoints", report.checkpoints)
        .field("unsealed", report.unsealed_lines)
        .field(
            "signatures",
            if report.signatures_checked {
                "checked"
            } else {
                "unchecked"
            },
        )
        .field("run_id", run_id);
    outcome.report = report.to_text().lines().map(str::to_string).collect();
    outcome.data.insert(
        "report".into(),
        serde_json::to_value(&report).map_err(|e| Error::Software(e.to_string()))?,
    );
    Ok(outcome)
}

fn read_ledger_head(path: &Path) -> Result<AuditHead> {
    let ledger = Ledger::open_read_only(path)?;
    match ledger.audit_head()? {
        Some((row, _)) => Ok(AuditHead {
            seq: row.seq,
            hash: row.hash,
            len: row.len,
        }),
        None => Err(Error::Inconsistent(format!(
            "ledger {} records no audit head",
            path.display()
        ))),
    }
}
