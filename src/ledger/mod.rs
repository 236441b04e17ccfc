//! The SQLite ledger: key versions and their states, rotation runs and the steps they
//! reached, used approval nonces, signed checkpoints and the audit trail's head.
//!
//! The ledger is the source of truth for key state. This is the only module that
//! imports rusqlite; it never touches the HSM or the audit file. Every write runs in a
//! `BEGIN IMMEDIATE` transaction, so concurrent writers queue on the busy timeout
//! instead of failing.

mod schema;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::model::{KeyId, KeyState, KeyType};

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path} not found\nhint: run `keyrot init` first")]
    Missing { path: PathBuf },
    #[error("ledger {path} is busy: another process held it for more than {seconds} s")]
    Busy { path: PathBuf, seconds: u64 },
    #[error("ledger {path} is on a full disk: {source}")]
    DiskFull {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "ledger {path}: schema version {found} is newer than this keyrot supports ({supported})"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("ledger {path}: invalid value in {table}.{column}: {value:?}")]
    Corrupt {
        path: PathBuf,
        table: &'static str,
        column: &'static str,
        value: String,
    },
    #[error("ledger {path}: {action} failed: {source}")]
    Sqlite {
        path: PathBuf,
        action: &'static str,
        source: rusqlite::Error,
    },
    #[error("failed to create ledger {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, LedgerError>;

/// One key version as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub domain: String,
    pub version: u32,
    pub key_id: KeyId,
    pub label: String,
    pub key_type: KeyType,
    pub state: KeyState,
    /// Microseconds since the Unix epoch, UTC.
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub deprecated_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub destroyed_at: Option<i64>,
    pub check_value: Option<String>,
    pub reason: Option<String>,
}

/// Progress of a rotation run, recorded before each step acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Intent recorded: the pending key row exists, nothing in the HSM yet.
    Started,
    /// The key objects exist in the HSM.
    Generated,
    /// The self-test passed.
    Tested,
    /// The new key is active and the old one deprecated in the ledger.
    Switched,
    /// A revoke run moved its target key to `revoked` in the ledger.
    Revoked,
    /// HSM usage flags match the ledger for every key of the domain.
    Converged,
    /// Postconditions checked and the result recorded.
    Finished,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Started => "started",
            Step::Generated => "generated",
            Step::Tested => "tested",
            Step::Switched => "switched",
            Step::Revoked => "revoked",
            Step::Converged => "converged",
            Step::Finished => "finished",
        }
    }
}

impl FromStr for Step {
    type Err = ();

    fn from_str(s: &str) -> std::result::Result<Step, ()> {
        [
            Step::Started,
            Step::Generated,
            Step::Tested,
            Step::Switched,
            Step::Revoked,
            Step::Converged,
            Step::Finished,
        ]
        .into_iter()
        .find(|step| step.as_str() == s)
        .ok_or(())
    }
}

/// One run of a workflow on one domain.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_id: String,
    pub domain: String,
    /// `rotate` or `revoke`.
    pub kind: String,
    pub step: Step,
    pub new_version: Option<u32>,
    pub old_version: Option<u32>,
    pub actor: String,
    pub emergency: bool,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// Final outcome word (`rotated`, `revoked`, `abandoned`, …); `None` while unfinished.
    pub outcome: Option<String>,
    /// Result fields recorded at the end, replayed for a rerun of the same run id.
    pub result: Option<String>,
    /// Target version of a revoke run.
    pub target_version: Option<u32>,
    pub reason: Option<String>,
}

/// Head of the audit trail: the last line's sequence number and hash, and the file length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRow {
    pub seq: u64,
    pub hash: String,
    pub len: u64,
}

/// A signed audit checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub seq: u64,
    pub size: u64,
    pub head: String,
    pub signature: String,
    pub signed_at: i64,
}

/// Fields of a rotation's intent, written in one transaction.
#[derive(Debug, Clone)]
pub struct RotationStart<'a> {
    pub run_id: &'a str,
    pub domain: &'a str,
    pub kind: &'a str,
    pub new_version: u32,
    pub old_version: Option<u32>,
    pub key_id: KeyId,
    pub label: &'a str,
    pub key_type: KeyType,
    pub actor: &'a str,
    pub emergency: bool,
    pub now: i64,
    pub target_version: Option<u32>,
    pub reason: Option<&'a str>,
}

/// An approval consumed by the run that a [`RotationStart`] records.
#[derive(Debug, Clone)]
pub struct ApprovalUse<'a> {
    pub nonce: &'a str,
    pub approver: &'a str,
    /// `rotate` or `revoke`.
    pub action: &'a str,
}

/// Result of recording a run's intent together with an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartResult {
    /// The run is recorded and the nonce, if any, is burned.
    Started,
    /// The nonce was burned before by `run_id`; nothing was written.
    NonceUsed { run_id: String },
}

/// Open connection to the ledger file.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    /// Audit head of a line already written and synced, stored by the next write
    /// transaction of this connection instead of a transaction of its own.
    deferred_head: Option<HeadRow>,
}

impl Ledger {
    /// Opens the ledger, creating it with mode 0600 and migrating its schema if needed.
    pub fn open_or_create(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            create_private_file(path)?;
        }
        let ledger = Ledger::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        ledger.configure()?;
        schema::migrate(&ledger.conn, path)?;
        Ok(ledger)
    }

    /// Opens an existing ledger; a missing file is an error, never created.
    pub fn open_existing(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            return Err(LedgerError::Missing {
                path: path.to_path_buf(),
            });
        }
        let ledger = Ledger::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        ledger.configure()?;
        schema::migrate(&ledger.conn, path)?;
        Ok(ledger)
    }

    /// Opens an existing ledger for reading only: no migration, no pragma that writes.
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            return Err(LedgerError::Missing {
                path: path.to_path_buf(),
            });
        }
        let ledger = Ledger::connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        ledger
            .conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| ledger.error("set busy timeout", e))?;
        let found: i64 = ledger
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| ledger.error("read schema version", e))?;
        if found > schema::SCHEMA_VERSION {
            return Err(LedgerError::TooNew {
                path: path.to_path_buf(),
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        Ok(ledger)
    }

    fn connect(path: &Path, flags: OpenFlags) -> Result<Ledger> {
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|source| LedgerError::Sqlite {
                path: path.to_path_buf(),
                action: "open",
                source,
            })?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            deferred_head: None,
        })
    }

    fn configure(&self) -> Result<()> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.error("set busy timeout", e))?;
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| self.error("enable WAL", e))?;
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.error("set synchronous=FULL", e))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.error("enable foreign keys", e))?;
        // Closing the last connection would otherwise checkpoint the WAL into the main
        // file, sync it and delete the WAL, and the next process would create the WAL
        // and sync the folder again. Checkpoints still run automatically on commit.
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(|e| self.error("disable checkpoint on close", e))?;
        // SQLite creates the -wal and -shm files with the database's mode, so 0600
        // on the main file keeps them private too.
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, action: &'static str, source: rusqlite::Error) -> LedgerError {
        classify(&self.path, action, source)
    }

    /// Runs `body` inside a `BEGIN IMMEDIATE` transaction and commits it, together
    /// with a deferred audit head, if any.
    fn write<T>(
        &mut self,
        action: &'static str,
        body: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| classify(&path, action, e))?;
        if let Some(head) = &self.deferred_head {
            update_head(&tx, head).map_err(|e| classify(&path, action, e))?;
        }
        let value = body(&tx).map_err(|e| classify(&path, action, e))?;
        tx.commit().map_err(|e| classify(&path, action, e))?;
        self.deferred_head = None;
        Ok(value)
    }

    // ---- audit head and checkpoints ----

    /// Returns the audit head and the log id, or `None` before the genesis line exists.
    /// A head deferred by [`Ledger::defer_audit_head`] counts as stored.
    pub fn audit_head(&self) -> Result<Option<(HeadRow, String)>> {
        let stored = self.stored_audit_head()?;
        Ok(stored.map(|(head, log_id)| match &self.deferred_head {
            Some(deferred) if deferred.seq > head.seq => (deferred.clone(), log_id),
            _ => (head, log_id),
        }))
    }

    fn stored_audit_head(&self) -> Result<Option<(HeadRow, String)>> {
        self.conn
            .query_row(
                "SELECT seq, hash, len, log_id FROM audit_head WHERE id = 1",
                [],
                |row| {
                    Ok((
                        HeadRow {
                            seq: row.get::<_, i64>(0)? as u64,
                            hash: row.get(1)?,
                            len: row.get::<_, i64>(2)? as u64,
                        },
                        row.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.error("read audit head", e))
    }

    /// Records the head after the genesis line; a second call with a head already
    /// present fails, so a trail is never silently replaced.
    pub fn init_audit_head(
        &mut self,
        head: &HeadRow,
        log_id: &str,
        fingerprint: &str,
    ) -> Result<()> {
        self.write("record audit genesis", |tx| {
            tx.execute(
                "INSERT INTO audit_head (id, seq, hash, len, log_id, key_fingerprint)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                params![
                    head.seq as i64,
                    head.hash,
                    head.len as i64,
                    log_id,
                    fingerprint
                ],
            )?;
            Ok(())
        })
    }

    /// Stores the head after a synced append.
    pub fn set_audit_head(&mut self, head: &HeadRow) -> Result<()> {
        self.write("update audit head", |tx| {
            update_head(tx, head)?;
            Ok(())
        })
    }

    /// Stores the head after a synced append in the next write transaction of this
    /// connection, which saves a commit (and its WAL sync) per audit line. The head
    /// only moves forward, so a deferred head never overwrites a newer one that
    /// another process stored meanwhile. Call [`Ledger::flush_audit_head`] when no
    /// further write follows; dropping the ledger also tries to.
    pub fn defer_audit_head(&mut self, head: &HeadRow) {
        if self.deferred_head.as_ref().is_none_or(|d| d.seq < head.seq) {
            self.deferred_head = Some(head.clone());
        }
    }

    /// Stores a deferred audit head now, if there is one.
    pub fn flush_audit_head(&mut self) -> Result<()> {
        if self.deferred_head.is_none() {
            return Ok(());
        }
        self.write("update audit head", |_| Ok(()))
    }

    /// Stores a checkpoint and the head that its own line produced, in one transaction.
    pub fn record_checkpoint(&mut self, checkpoint: &CheckpointRow, head: &HeadRow) -> Result<()> {
        self.write("record checkpoint", |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints (seq, size, head, signature, signed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    checkpoint.seq as i64,
                    checkpoint.size as i64,
                    checkpoint.head,
                    checkpoint.signature,
                    checkpoint.signed_at
                ],
            )?;
            update_head(tx, head)?;
            Ok(())
        })
    }

    pub fn last_checkpoint(&self) -> Result<Option<CheckpointRow>> {
        self.conn
            .query_row(
                "SELECT seq, size, head, signature, signed_at FROM checkpoints
                 ORDER BY seq DESC LIMIT 1",
                [],
                |row| {
                    Ok(CheckpointRow {
                        seq: row.get::<_, i64>(0)? as u64,
                        size: row.get::<_, i64>(1)? as u64,
                        head: row.get(2)?,
                        signature: row.get(3)?,
                        signed_at: row.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.error("read last checkpoint", e))
    }

    // ---- keys ----

    /// Returns every key version of `domain`, oldest first.
    pub fn keys(&self, domain: &str) -> Result<Vec<KeyRow>> {
        self.query_keys("WHERE domain = ?1 ORDER BY version", params![domain])
    }

    /// Returns every key version of every domain, by domain then version.
    pub fn all_keys(&self) -> Result<Vec<KeyRow>> {
        self.query_keys("ORDER BY domain, version", params![])
    }

    fn query_keys(&self, tail: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<KeyRow>> {
        let sql = format!(
            "SELECT domain, version, key_id, label, key_type, state, created_at, activated_at,
                    deprecated_at, revoked_at, destroyed_at, check_value, reason
             FROM keys {tail}"
        );
        let mut statement = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.error("read keys", e))?;
        let raw = statement
            .query_map(args, |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, Option<i64>>(7)?,
                    row.get::<_, Option<i64>>(8)?,
                    row.get::<_, Option<i64>>(9)?,
                    row.get::<_, Option<i64>>(10)?,
                    row.get::<_, Option<String>>(11)?,
                    row.get::<_, Option<String>>(12)?,
                ))
            })
            .map_err(|e| self.error("read keys", e))?;
        let mut keys = Vec::new();
        for item in raw {
            let r = item.map_err(|e| self.error("read keys", e))?;
            keys.push(KeyRow {
                domain: r.0,
                version: u32::try_from(r.1)
                    .map_err(|_| self.corrupt("keys", "version", r.1.to_string()))?,
                key_id: KeyId::from_hex(&r.2).map_err(|_| self.corrupt("keys", "key_id", r.2))?,
                label: r.3,
                key_type: r
                    .4
                    .parse()
                    .map_err(|_| self.corrupt("keys", "key_type", r.4))?,
                state: r
                    .5
                    .parse()
                    .map_err(|_| self.corrupt("keys", "state", r.5))?,
                created_at: r.6,
                activated_at: r.7,
                deprecated_at: r.8,
                revoked_at: r.9,
                destroyed_at: r.10,
                check_value: r.11,
                reason: r.12,
            });
        }
        Ok(keys)
    }

    fn corrupt(&self, table: &'static str, column: &'static str, value: String) -> LedgerError {
        LedgerError::Corrupt {
            path: self.path.clone(),
            table,
            column,
            value,
        }
    }

    /// Names of every domain with at least one key row.
    pub fn domains(&self) -> Result<Vec<String>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT DISTINCT domain FROM keys ORDER BY domain")
            .map_err(|e| self.error("read domains", e))?;
        let names = statement
            .query_map([], |row| row.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
            .map_err(|e| self.error("read domains", e))?;
        Ok(names)
    }

    /// Moves one key to `state`, recording the transition in the key history.
    ///
    /// The state model is checked by the caller; this only records.
    pub fn set_key_state(
        &mut self,
        domain: &str,
        version: u32,
        state: KeyState,
        run_id: &str,
        now: i64,
        reason: Option<&str>,
    ) -> Result<()> {
        self.write("change key state", |tx| {
            change_state(tx, domain, version, state, run_id, now)?;
            if reason.is_some() {
                tx.execute(
                    "UPDATE keys SET reason = ?3 WHERE domain = ?1 AND version = ?2",
                    params![domain, version, reason],
                )?;
            }
            Ok(())
        })
    }

    /// Moves a key to `revoked` with its reason and records that the revoke run
    /// `run_id` reached [`Step::Revoked`], in one transaction, so a crash never
    /// leaves the key revoked while the run still reads `started`.
    pub fn revoke_key(
        &mut self,
        run_id: &str,
        domain: &str,
        version: u32,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        self.write("revoke key", |tx| {
            change_state(tx, domain, version, KeyState::Revoked, run_id, now)?;
            tx.execute(
                "UPDATE keys SET reason = ?3 WHERE domain = ?1 AND version = ?2",
                params![domain, version, reason],
            )?;
            tx.execute(
                "UPDATE runs SET step = 'revoked' WHERE run_id = ?1 AND domain = ?2",
                params![run_id, domain],
            )?;
            Ok(())
        })
    }

    /// Stores the key check value of a key, for its tombstone after destruction.
    pub fn set_check_value(&mut self, domain: &str, version: u32, value: &str) -> Result<()> {
        self.write("record key check value", |tx| {
            tx.execute(
                "UPDATE keys SET check_value = ?3 WHERE domain = ?1 AND version = ?2",
                params![domain, version, value],
            )?;
            Ok(())
        })
    }

    /// Records a passed self-test: the key's check value and the run's step `tested`,
    /// in one transaction.
    pub fn record_self_test(
        &mut self,
        run_id: &str,
        domain: &str,
        version: u32,
        check_value: &str,
    ) -> Result<()> {
        self.write("record self-test", |tx| {
            tx.execute(
                "UPDATE keys SET check_value = ?3 WHERE domain = ?1 AND version = ?2",
                params![domain, version, check_value],
            )?;
            tx.execute(
                "UPDATE runs SET step = 'tested' WHERE run_id = ?1 AND domain = ?2",
                params![run_id, domain],
            )?;
            Ok(())
        })
    }

    // ---- runs ----

    /// Records the intent of a rotation: the run row and the pending key, in one transaction.
    pub fn start_rotation(&mut self, start: &RotationStart<'_>) -> Result<()> {
        self.start_rotation_approved(start, None).map(drop)
    }

    /// Records the intent of a rotation and burns the approval's nonce in the same
    /// transaction, so an approval is used exactly when its run exists.
    pub fn start_rotation_approved(
        &mut self,
        start: &RotationStart<'_>,
        approval: Option<&ApprovalUse<'_>>,
    ) -> Result<StartResult> {
        self.write("record rotation intent", |tx| {
            if let Some(run_id) = burn(tx, start, approval)? {
                return Ok(StartResult::NonceUsed { run_id });
            }
            insert_run(tx, start, true)?;
            tx.execute(
                "INSERT INTO keys (domain, version, key_id, label, key_type, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
                params![
                    start.domain,
                    start.new_version,
                    start.key_id.to_hex(),
                    start.label,
                    start.key_type.as_str(),
                    start.now
                ],
            )?;
            history(
                tx,
                start.domain,
                start.new_version,
                None,
                KeyState::Pending,
                start.run_id,
                start.now,
            )?;
            Ok(StartResult::Started)
        })
    }

    /// Records the start of a run that creates no key (a revoke of a deprecated key).
    pub fn start_run(&mut self, start: &RotationStart<'_>) -> Result<()> {
        self.start_run_approved(start, None).map(drop)
    }

    /// Records the start of a run that creates no key and burns the approval's nonce
    /// in the same transaction.
    pub fn start_run_approved(
        &mut self,
        start: &RotationStart<'_>,
        approval: Option<&ApprovalUse<'_>>,
    ) -> Result<StartResult> {
        self.write("record run intent", |tx| {
            if let Some(run_id) = burn(tx, start, approval)? {
                return Ok(StartResult::NonceUsed { run_id });
            }
            insert_run(tx, start, false)?;
            Ok(StartResult::Started)
        })
    }

    /// Records that a run has reached `step`.
    pub fn set_step(&mut self, run_id: &str, domain: &str, step: Step) -> Result<()> {
        self.write("record rotation step", |tx| {
            tx.execute(
                "UPDATE runs SET step = ?3 WHERE run_id = ?1 AND domain = ?2",
                params![run_id, domain, step.as_str()],
            )?;
            Ok(())
        })
    }

    /// Makes `new_version` active and `old_version` deprecated in one transaction.
    pub fn switch_active(
        &mut self,
        run_id: &str,
        domain: &str,
        new_version: u32,
        old_version: Option<u32>,
        now: i64,
    ) -> Result<()> {
        self.write("switch active key", |tx| {
            // Demote first: the partial unique index allows one active key per domain.
            if let Some(old) = old_version {
                change_state(tx, domain, old, KeyState::Deprecated, run_id, now)?;
            }
            change_state(tx, domain, new_version, KeyState::Active, run_id, now)?;
            tx.execute(
                "UPDATE runs SET step = 'switched' WHERE run_id = ?1 AND domain = ?2",
                params![run_id, domain],
            )?;
            Ok(())
        })
    }

    /// Records a run's final outcome and the result fields to replay.
    pub fn finish_run(
        &mut self,
        run_id: &str,
        domain: &str,
        outcome: &str,
        result: &str,
        now: i64,
    ) -> Result<()> {
        self.write("record run outcome", |tx| {
            tx.execute(
                "UPDATE runs SET step = 'finished', outcome = ?3, result = ?4, finished_at = ?5
                 WHERE run_id = ?1 AND domain = ?2",
                params![run_id, domain, outcome, result, now],
            )?;
            Ok(())
        })
    }

    /// Returns the run recorded under this run id for this domain.
    pub fn run(&self, run_id: &str, domain: &str) -> Result<Option<RunRow>> {
        self.query_runs("WHERE run_id = ?1 AND domain = ?2", params![run_id, domain])
            .map(|mut rows| rows.pop())
    }

    /// Returns every run of `domain` that has not finished, oldest first.
    pub fn unfinished_runs(&self, domain: &str) -> Result<Vec<RunRow>> {
        self.query_runs(
            "WHERE domain = ?1 AND outcome IS NULL ORDER BY started_at",
            params![domain],
        )
    }

    /// Returns every unfinished run of every domain.
    pub fn all_unfinished_runs(&self) -> Result<Vec<RunRow>> {
        self.query_runs(
            "WHERE outcome IS NULL ORDER BY domain, started_at",
            params![],
        )
    }

    fn query_runs(&self, tail: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<RunRow>> {
        let sql = format!(
            "SELECT run_id, domain, kind, step, new_version, old_version, actor, emergency,
                    started_at, finished_at, outcome, result, target_version, reason
             FROM runs {tail}"
        );
        let mut statement = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.error("read runs", e))?;
        let raw = statement
            .query_map(args, |row| {
                Ok((
                    RunRow {
                        run_id: row.get(0)?,
                        domain: row.get(1)?,
                        kind: row.get(2)?,
                        step: Step::Started,
                        new_version: row.get(4)?,
                        old_version: row.get(5)?,
                        actor: row.get(6)?,
                        emergency: row.get(7)?,
                        started_at: row.get(8)?,
                        finished_at: row.get(9)?,
                        outcome: row.get(10)?,
                        result: row.get(11)?,
                        target_version: row.get(12)?,
                        reason: row.get(13)?,
                    },
                    row.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| self.error("read runs", e))?;
        let mut runs = Vec::new();
        for item in raw {
            let (mut run, step) = item.map_err(|e| self.error("read runs", e))?;
            run.step = step
                .parse()
                .map_err(|_| self.corrupt("runs", "step", step))?;
            runs.push(run);
        }
        Ok(runs)
    }

    /// Counts the rotations of `domain` started at or after `since` (microseconds),
    /// emergencies included, abandoned ones excluded.
    pub fn rotations_since(&self, domain: &str, since: i64) -> Result<u32> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM runs WHERE domain = ?1 AND kind = 'rotate'
                   AND started_at >= ?2 AND (outcome IS NULL OR outcome != 'abandoned')",
                params![domain, since],
                |row| row.get(0),
            )
            .map_err(|e| self.error("count rotations", e))
    }

    /// Returns the start times of the rotations that [`Ledger::rotations_since`] counts,
    /// oldest first.
    pub fn rotation_starts_since(&self, domain: &str, since: i64) -> Result<Vec<i64>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT started_at FROM runs WHERE domain = ?1 AND kind = 'rotate'
                   AND started_at >= ?2 AND (outcome IS NULL OR outcome != 'abandoned')
                 ORDER BY started_at",
            )
            .map_err(|e| self.error("read rotation times", e))?;
        let times = statement
            .query_map(params![domain, since], |row| row.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>())
            .map_err(|e| self.error("read rotation times", e))?;
        Ok(times)
    }

    /// Returns the newest timestamp the ledger holds, for detecting a clock moved backwards.
    pub fn newest_timestamp(&self) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT MAX(t) FROM (
                    SELECT MAX(started_at) AS t FROM runs
                    UNION ALL SELECT MAX(finished_at) FROM runs
                    UNION ALL SELECT MAX(at) FROM key_history)",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.error("read newest timestamp", e))
    }

    /// Burns an approval nonce; `Ok(false)` when it was used before.
    pub fn burn_nonce(
        &mut self,
        nonce: &str,
        domain: &str,
        action: &str,
        approver: &str,
        run_id: &str,
        now: i64,
    ) -> Result<bool> {
        self.write("burn approval nonce", |tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO approvals_used (nonce, domain, action, approver, run_id, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![nonce, domain, action, approver, run_id, now],
            )?;
            Ok(inserted == 1)
        })
    }

    /// Returns the run that burned `nonce`, if any.
    pub fn nonce_user(&self, nonce: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT run_id FROM approvals_used WHERE nonce = ?1",
                params![nonce],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.error("read approval nonce", e))
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // A run that stopped between an audit append and its next ledger write still
        // stores the head. If this fails, the next writer adopts the synced line.
        if let Err(error) = self.flush_audit_head() {
            tracing::warn!(%error, "failed to store the audit head");
        }
    }
}

fn classify(path: &Path, action: &'static str, source: rusqlite::Error) -> LedgerError {
    match source.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => LedgerError::Busy {
            path: path.to_path_buf(),
            seconds: BUSY_TIMEOUT.as_secs(),
        },
        Some(ErrorCode::DiskFull) => LedgerError::DiskFull {
            path: path.to_path_buf(),
            source,
        },
        _ => LedgerError::Sqlite {
            path: path.to_path_buf(),
            action,
            source,
        },
    }
}

/// Inserts the approval's nonce, or returns the run that burned it before.
fn burn(
    tx: &rusqlite::Transaction<'_>,
    start: &RotationStart<'_>,
    approval: Option<&ApprovalUse<'_>>,
) -> rusqlite::Result<Option<String>> {
    let Some(approval) = approval else {
        return Ok(None);
    };
    let used_by: Option<String> = tx
        .query_row(
            "SELECT run_id FROM approvals_used WHERE nonce = ?1",
            params![approval.nonce],
            |row| row.get(0),
        )
        .optional()?;
    if used_by.is_some() {
        return Ok(used_by);
    }
    tx.execute(
        "INSERT INTO approvals_used (nonce, domain, action, approver, run_id, used_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            approval.nonce,
            start.domain,
            approval.action,
            approval.approver,
            start.run_id,
            start.now
        ],
    )?;
    Ok(None)
}

/// Moves the stored audit head forward to `head`. A head at or before the stored one
/// Inserts the run row of `start` at step `started`; `creates_key` records its new
/// and old versions, which a run that creates no key leaves empty.
fn insert_run(
    tx: &rusqlite::Transaction<'_>,
    start: &RotationStart<'_>,
    creates_key: bool,
) -> rusqlite::Result<()> {
    let (new_version, old_version) = if creates_key {
        (Some(start.new_version), start.old_version)
    } else {
        (None, None)
    };
    tx.execute(
        "INSERT INTO runs (run_id, domain, kind, step, new_version, old_version, actor,
                           emergency, started_at, target_version, reason)
         VALUES (?1, ?2, ?3, 'started', ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            start.run_id,
            start.domain,
            start.kind,
            new_version,
            old_version,
            start.actor,
            start.emergency,
            start.now,
            start.target_version,
            start.reason
        ],
    )?;
    Ok(())
}

/// changes nothing, so a head stored late cannot move it back.
fn update_head(tx: &rusqlite::Transaction<'_>, head: &HeadRow) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE audit_head SET seq = ?1, hash = ?2, len = ?3 WHERE id = 1 AND seq < ?1",
        params![head.seq as i64, head.hash, head.len as i64],
    )?;
    Ok(())
}

fn change_state(
    tx: &rusqlite::Transaction<'_>,
    domain: &str,
    version: u32,
    state: KeyState,
    run_id: &str,
    now: i64,
) -> rusqlite::Result<()> {
    let previous: Option<String> = tx
        .query_row(
            "SELECT state FROM keys WHERE domain = ?1 AND version = ?2",
            params![domain, version],
            |row| row.get(0),
        )
        .optional()?;
    let Some(previous) = previous else {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    };
    if previous == state.as_str() {
        return Ok(());
    }
    let column = match state {
        KeyState::Pending => "created_at",
        KeyState::Active => "activated_at",
        KeyState::Deprecated => "deprecated_at",
        KeyState::Revoked => "revoked_at",
        KeyState::Destroyed => "destroyed_at",
    };
    tx.execute(
        &format!("UPDATE keys SET state = ?3, {column} = ?4 WHERE domain = ?1 AND version = ?2"),
        params![domain, version, state.as_str(), now],
    )?;
    let from = KeyState::from_str(&previous).ok();
    history(tx, domain, version, from, state, run_id, now)
}

fn history(
    tx: &rusqlite::Transaction<'_>,
    domain: &str,
    version: u32,
    from: Option<KeyState>,
    to: KeyState,
    run_id: &str,
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO key_history (domain, version, from_state, to_state, run_id, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            domain,
            version,
            from.map(|s| s.as_str()),
            to.as_str(),
            run_id,
            now
        ],
    )?;
    Ok(())
}

/// Creates an empty file readable and writable by its owner only.
pub fn create_private_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|source| LedgerError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match result {
        Ok(file) => {
            // The process umask cannot widen 0600, but an inherited ACL default could.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|source| LedgerError::Create {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(LedgerError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
