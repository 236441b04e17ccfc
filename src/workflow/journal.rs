//! Appends a run's audit records and keeps the ledger's audit head in step.
//!
//! Each append opens the audit file under its exclusive `flock`, checks the file's
//! tail against the ledger head, writes and syncs one line, and releases the lock.
//! Runs on different domains therefore take turns line by line and never fork the
//! chain. The new head goes into the ledger's next write transaction (see
//! [`Ledger::defer_audit_head`]), always after the line is synced. The stored head
//! only moves forward, so heads stored in another order than the appends are safe.

use std::path::PathBuf;

use crate::audit::{self, AuditHead, AuditWriter, Detail, KeyRef, Outcome as AuditOutcome, Record};
use crate::error::{Error, Result};
use crate::hsm::HsmSession;
use crate::ledger::{CheckpointRow, HeadRow, KeyRow, Ledger};

use super::{Context, failpoint};

/// Audit writer of one run.
pub struct Journal {
    path: PathBuf,
    run_id: String,
    actor: audit::Actor,
    /// Whether this run appended a line since its last checkpoint.
    unsealed: bool,
}

/// One event to record.
pub struct Event<'a> {
    pub domain: &'a str,
    pub name: &'a str,
    pub key: Option<&'a KeyRow>,
    pub outcome: AuditOutcome,
    pub detail: Detail,
}

impl<'a> Event<'a> {
    pub fn new(domain: &'a str, name: &'a str) -> Event<'a> {
        Event {
            domain,
            name,
            key: None,
            outcome: AuditOutcome::Ok,
            detail: Detail::new(),
        }
    }

    pub fn key(mut self, key: &'a KeyRow) -> Event<'a> {
        self.key = Some(key);
        self
    }

    pub fn outcome(mut self, outcome: AuditOutcome) -> Event<'a> {
        self.outcome = outcome;
        self
    }

    pub fn detail(mut self, name: &str, value: impl Into<audit::Value>) -> Event<'a> {
        self.detail.insert(name, value);
        self
    }
}

impl Journal {
    pub fn new(ctx: &Context) -> Journal {
        Journal {
            path: ctx.config.storage.audit_log.clone(),
            run_id: ctx.run_id.clone(),
            actor: ctx.actor.clone(),
            unsealed: false,
        }
    }

    /// Opens the audit file under its lock after checking its tail against the ledger.
    ///
    /// A file shorter than the ledger head, or whose tail does not chain from it, is
    /// an error before anything is written. A torn last line is terminated and
    /// recorded, and complete lines after the head are adopted.
    fn open(&mut self, ledger: &mut Ledger) -> Result<AuditWriter> {
        let head = ledger_head(ledger)?;
        let writer = AuditWriter::open(&self.path, &head)?;
        let now = writer.head();
        if *now != head {
            // Lines appended by a run that died before storing its head, or a torn tail
            // this open recovered: the ledger follows the file.
            ledger.set_audit_head(&to_row(now))?;
            self.unsealed = true;
        }
        Ok(writer)
    }

    /// Checks the audit file against the ledger head before a run changes anything.
    ///
    /// Writes only to repair what a crashed run left: a torn last line is closed and
    /// recorded, and complete lines after the head are adopted.
    pub fn check_tail(&mut self, ledger: &mut Ledger) -> Result<()> {
        self.open(ledger).map(drop)
    }

    /// Appends one record and hands the new head to the ledger, which stores it with
    /// its next write transaction.
    pub fn emit(&mut self, ledger: &mut Ledger, event: Event<'_>) -> Result<()> {
        let mut writer = self.open(ledger)?;
        let record = Record {
            run: self.run_id.clone(),
            domain: event.domain.to_string(),
            event: event.name.to_string(),
            actor: self.actor.clone(),
            key: event.key.map(|k| KeyRef {
                version: k.version,
                id: k.key_id,
                label: k.label.clone(),
                state: k.state,
            }),
            outcome: event.outcome,
            detail: event.detail,
        };
        let head = writer.append(&record)?;
        failpoint("journal.before_head");
        ledger.defer_audit_head(&to_row(&head));
        self.unsealed = true;
        Ok(())
    }

    /// Signs the chain head with the HSM's checkpoint key if this run appended
    /// anything, and records the checkpoint in the chain and the ledger.
    pub fn seal(&mut self, ledger: &mut Ledger, session: &HsmSession<'_>) -> Result<()> {
        if !self.unsealed {
            return Ok(());
        }
        let mut writer = self.open(ledger)?;
        let mut signer = |digest: &[u8; 32]| session.sign_digest(digest).map_err(|e| e.to_string());
        let (head, info) = writer.checkpoint(&mut signer, &self.run_id, chrono::Utc::now())?;
        let row = CheckpointRow {
            seq: info.seq,
            size: info.size,
            head: info.head.clone(),
            signature: info.sig.clone(),
            signed_at: chrono::DateTime::parse_from_rfc3339(&info.ts)
                .map(|t| t.timestamp_micros())
                .unwrap_or_else(|_| super::now_micros()),
        };
        ledger.record_checkpoint(&row, &to_row(&head))?;
        self.unsealed = false;
        Ok(())
    }
}

fn ledger_head(ledger: &Ledger) -> Result<AuditHead> {
    match ledger.audit_head()? {
        Some((row, _)) => Ok(AuditHead {
            seq: row.seq,
            hash: row.hash,
            len: row.len,
        }),
        None => Err(Error::Inconsistent(format!(
            "ledger {} has no audit head\nhint: run `keyrot init`",
            ledger.path().display()
        ))),
    }
}

pub fn to_row(head: &AuditHead) -> HeadRow {
    HeadRow {
        seq: head.seq,
        hash: head.hash.clone(),
        len: head.len,
    }
}
