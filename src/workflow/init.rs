//! `keyrot init`: the ledger, the audit checkpoint key and the audit genesis line.
//!
//! Running it again changes nothing: each part is created only when missing, and a
//! part that exists is checked rather than replaced.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::audit;
use crate::error::{Error, Result};
use crate::hsm::HsmSession;
use crate::ledger::Ledger;
use crate::pem::public_key_pem;

use super::journal::to_row;
use super::session::{login, open_hsm};
use super::{Context, Outcome};

/// Creates whatever is missing of ledger, checkpoint key, genesis line and exported
/// public key.
pub fn init(ctx: &Context) -> Result<Outcome> {
    let mut ledger = Ledger::open_or_create(&ctx.config.storage.ledger)?;
    let (hsm, pin) = open_hsm(&ctx.config)?;
    let session = login(&hsm, &pin)?;
    let created = ensure_initialised(ctx, &mut ledger, &session)?;
    let public_key = session.audit_public_key()?;
    let replaced = export_public_key(ctx, &public_key)?;
    let mut outcome = Outcome::new(if created {
        "initialized"
    } else {
        "already-initialized"
    })
    .field("ledger", ctx.config.storage.ledger.display())
    .field("audit_log", ctx.config.storage.audit_log.display())
    .field("pubkey", ctx.config.storage.audit_pubkey.display());
    if replaced {
        outcome = outcome.field("pubkey_replaced", "true");
    }
    Ok(outcome.field("run_id", &ctx.run_id))
}

/// Writes the genesis line and the ledger's audit head if the ledger has none yet.
/// Returns whether it created them.
pub fn ensure_initialised(
    ctx: &Context,
    ledger: &mut Ledger,
    session: &HsmSession<'_>,
) -> Result<bool> {
    let path = &ctx.config.storage.audit_log;
    if ledger.audit_head()?.is_some() {
        if !path.exists() {
            return Err(Error::Inconsistent(format!(
                "audit file {} is missing but the ledger records its head\nhint: restore the audit file from backup",
                path.display()
            )));
        }
        return Ok(false);
    }

    let public_key = session.ensure_audit_key()?;
    let fingerprint = hex::encode(Sha256::digest(&public_key));
    let existing = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let (head, log_id) = if existing > 0 {
        // A run that died between writing the genesis line and recording its head
        // leaves a file with only that line. A longer file is not ours to adopt.
        let genesis = read_lone_genesis(path)?;
        if genesis.1 != fingerprint {
            return Err(Error::Inconsistent(format!(
                "audit file {} exists but the ledger {} records no head, and its genesis names another checkpoint key\nhint: point storage.audit_log at a new file, or restore the ledger",
                path.display(),
                ledger.path().display()
            )));
        }
        (genesis.0, genesis.2)
    } else {
        let log_id = hex::encode(rand::random::<[u8; 16]>());
        let head = audit::create_genesis(path, &log_id, &fingerprint, chrono::Utc::now())?;
        (head, log_id)
    };
    ledger.init_audit_head(&to_row(&head), &log_id, &fingerprint)?;
    export_public_key(ctx, &public_key)?;
    tracing::info!(audit_log = %path.display(), "audit trail initialised");
    Ok(true)
}

/// Writes the checkpoint public key as PEM, replacing the file only if it differs.
/// Returns whether it replaced a file that held something else, which is logged as
/// a warning: the file may have been tampered with.
pub fn export_public_key(ctx: &Context, public_key: &[u8]) -> Result<bool> {
    let path = &ctx.config.storage.audit_pubkey;
    let pem = public_key_pem(public_key)
        .map_err(|e| Error::Software(format!("failed to encode the checkpoint public key: {e}")))?;
    let old = std::fs::read_to_string(path).ok();
    if old.as_deref() == Some(pem.as_str()) {
        return Ok(false);
    }
    let replaced = old.is_some();
    if replaced {
        tracing::warn!(
            path = %path.display(),
            "replacing a public key file that did not hold the HSM's checkpoint key; check who changed it"
        );
    }
    let io_error = |source| Error::Io {
        action: "failed to write public key",
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error)?;
    }
    let temporary = path.with_extension("pem.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io_error)?;
    file.write_all(pem.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    std::fs::rename(&temporary, path).map_err(io_error)?;
    Ok(replaced)
}

/// Reads an audit file that contains exactly one valid genesis line, and returns its
/// head, checkpoint key fingerprint and log id. Any other file is an inconsistency.
fn read_lone_genesis(path: &Path) -> Result<(audit::AuditHead, String, String)> {
    let report = audit::verify(path, &audit::VerifyOptions::default())?;
    let refuse = |why: &str| {
        Error::Inconsistent(format!(
            "audit file {} exists but the ledger records no head, and {why}\nhint: move the audit file aside or restore the ledger from backup",
            path.display()
        ))
    };
    let head = match (&report.failure, report.total_lines, &report.head) {
        (None, 1, Some(head)) => head.clone(),
        (Some(failure), _, _) => return Err(refuse(&format!("it does not verify: {failure}"))),
        _ => return Err(refuse("it holds more than a genesis line")),
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: "failed to read audit file",
        path: path.to_path_buf(),
        source,
    })?;
    let line: serde_json::Value = serde_json::from_str(text.trim_end())
        .map_err(|e| refuse(&format!("its genesis line does not parse: {e}")))?;
    let detail = &line["detail"];
    let fingerprint = detail["checkpoint_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let log_id = detail["log_id"].as_str().unwrap_or_default().to_string();
    Ok((head, fingerprint, log_id))
}
