//! The only writer of the audit file: genesis, appends, torn-tail recovery and
//! checkpoints.
//!
//! Concurrency: runs for different key domains append to one file, so every
//! [`AuditWriter`] holds an exclusive `flock` on the file from `open` until it is
//! dropped. After taking the lock, `open` reads the file's tail and continues from the
//! file's real last line, not from the head the caller passed in. A head that is behind
//! because another process appended and updated the ledger while this one waited for
//! the lock is therefore fine: the newer lines chain from it and are adopted. A caller
//! stores each returned head in the ledger while it still holds the writer, so that
//! ledger updates happen in the same order as the appends.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use fs2::FileExt;

use super::chain::{Chain, Genesis, LineFailure, Step, Tip, check_line};
use super::checkpoint::{CheckpointInfo, checkpoint_digest};
use super::error::Divergence;
use super::format::{
    Actor, Record, checkpoint_record, encode_line, format_ts, genesis_record, is_lower_hex,
    recovered_record,
};
use super::{AuditError, AuditHead, MAX_LINE_LEN};

/// Signs a 32-byte checkpoint digest with ECDSA P-256 and returns the raw r‖s
/// signature, or an error message.
pub type CheckpointSigner<'a> = dyn FnMut(&[u8; 32]) -> Result<[u8; 64], String> + 'a;

/// Torn bytes that `open` found at the end of the file and closed with a
/// `log.recovered` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Byte offset of the first torn byte.
    pub offset: u64,
    /// Number of torn bytes, without the newline that recovery added.
    pub length: u64,
    /// SHA-256 of the torn bytes in lowercase hex.
    pub sha256: String,
}

/// Creates the audit file with mode 0600 and writes its `log.genesis` line. Fails if
/// the file exists. The line and the directory entry are synced before it returns.
pub fn create_genesis(
    path: &Path,
    log_id: &str,
    key_fingerprint: &str,
    ts: DateTime<Utc>,
) -> Result<AuditHead, AuditError> {
    if log_id.is_empty() {
        return Err(AuditError::InvalidRecord(
            "log id must not be empty".to_owned(),
        ));
    }
    if !is_lower_hex(key_fingerprint.as_bytes(), 64) {
        return Err(AuditError::InvalidRecord(format!(
            "checkpoint key fingerprint {key_fingerprint:?} is not 64 lowercase hex digits"
        )));
    }
    let record = genesis_record(log_id, key_fingerprint, Actor::current());
    let (line, hash) = encode_line(0, &ts, super::ZERO_HASH, &record)?;

    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AuditError::io(path, "create audit file", e))?;
    file.lock_exclusive()
        .map_err(|e| AuditError::io(path, "lock audit file", e))?;
    file.write_all(&line)
        .map_err(|e| AuditError::io(path, "write audit genesis", e))?;
    file.sync_data()
        .map_err(|e| AuditError::io(path, "sync audit file", e))?;
    sync_parent_dir(path)?;
    Ok(AuditHead {
        seq: 0,
        hash,
        len: line.len() as u64,
    })
}

fn sync_parent_dir(path: &Path) -> Result<(), AuditError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(dir, "sync directory", e))
}

/// Appender holding the audit file's exclusive lock. See the module documentation
/// for how parallel processes share the file.
#[derive(Debug)]
pub struct AuditWriter {
    path: PathBuf,
    file: File,
    head: AuditHead,
    genesis: Genesis,
    actor: Actor,
    adopted: u64,
    recovered: Option<TornTail>,
    /// Set when a write failed part way: the file may end in a partial line, so
    /// further appends would corrupt it. The next `open` recovers the tail.
    poisoned: bool,
}

impl AuditWriter {
    /// Opens the audit file for appending and takes its exclusive lock, blocking
    /// until other writers release it. Then checks, before writing anything, that the
    /// line ending at `ledger_head.len` has the head's seq and hash, and that every
    /// line after it chains from it. Those lines are adopted. A torn last line is
    /// terminated and named by a `log.recovered` record.
    ///
    /// Errors: [`AuditError::Truncated`] when the file is shorter than the head,
    /// [`AuditError::Diverged`] when the head line or a later line does not match,
    /// both of kind [`super::ErrorKind::Inconsistent`].
    pub fn open(path: &Path, ledger_head: &AuditHead) -> Result<AuditWriter, AuditError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| AuditError::io(path, "open audit file", e))?;
        file.lock_exclusive()
            .map_err(|e| AuditError::io(path, "lock audit file", e))?;

        let file_len = file
            .metadata()
            .map_err(|e| AuditError::io(path, "stat audit file", e))?
            .len();
        if file_len < ledger_head.len {
            return Err(AuditError::Truncated {
                path: path.to_owned(),
                seq: ledger_head.seq,
                expected_len: ledger_head.len,
                found_len: file_len,
            });
        }

        let genesis = read_genesis(path, &file)?;
        check_head_line(path, &file, ledger_head)?;

        let mut writer = AuditWriter {
            path: path.to_owned(),
            file,
            head: ledger_head.clone(),
            genesis,
            actor: Actor::current(),
            adopted: 0,
            recovered: None,
            poisoned: false,
        };
        writer.adopt_tail(file_len)?;
        Ok(writer)
    }

    /// Head after the last line written or adopted.
    pub fn head(&self) -> &AuditHead {
        &self.head
    }

    /// Number of complete lines after the ledger head that `open` adopted.
    pub fn adopted(&self) -> u64 {
        self.adopted
    }

    /// Torn tail that `open` recovered, if any.
    pub fn recovered(&self) -> Option<&TornTail> {
        self.recovered.as_ref()
    }

    /// Log id named by the genesis record.
    pub fn log_id(&self) -> &str {
        &self.genesis.log_id
    }

    /// Checkpoint key fingerprint named by the genesis record.
    pub fn key_fingerprint(&self) -> &str {
        &self.genesis.key_fingerprint
    }

    /// Appends `rec` with the current time. See [`AuditWriter::append_at`].
    pub fn append(&mut self, rec: &Record) -> Result<AuditHead, AuditError> {
        self.append_at(rec, Utc::now())
    }

    /// Appends `rec` as the next line with timestamp `ts`: one `write` of the whole
    /// line on the append descriptor, then `fdatasync`. Returns the new head, which the
    /// caller stores in the ledger. Events starting with `log.` are rejected because
    /// only this module writes them.
    pub fn append_at(&mut self, rec: &Record, ts: DateTime<Utc>) -> Result<AuditHead, AuditError> {
        if rec.event.starts_with("log.") {
            return Err(AuditError::InvalidRecord(format!(
                "event {:?} is reserved for the audit module",
                rec.event
            )));
        }
        let (line, hash) = encode_line(self.head.seq + 1, &ts, &self.head.hash, rec)?;
        self.write_line(&line, hash)
    }

    /// Signs the current head and appends a `log.checkpoint` line recording the
    /// signature. `signer` returns the raw r‖s ECDSA P-256 signature of the 32-byte
    /// digest defined by [`checkpoint_digest`]. Returns the head after the checkpoint
    /// line and the checkpoint for the ledger.
    pub fn checkpoint(
        &mut self,
        signer: &mut CheckpointSigner<'_>,
        run: &str,
        ts: DateTime<Utc>,
    ) -> Result<(AuditHead, CheckpointInfo), AuditError> {
        let ts_text = format_ts(&ts);
        let digest = checkpoint_digest(self.head.seq, &self.head.hash, self.head.len, &ts_text)
            .expect("head hash is 64 hex digits");
        let sig = signer(&digest).map_err(AuditError::Signer)?;
        let info = CheckpointInfo {
            seq: self.head.seq,
            size: self.head.len,
            head: self.head.hash.clone(),
            ts: ts_text,
            sig: hex::encode(sig),
            line_seq: self.head.seq + 1,
        };
        let rec = checkpoint_record(
            &info,
            &self.genesis.key_fingerprint,
            run,
            self.actor.clone(),
        );
        let (line, hash) = encode_line(info.line_seq, &ts, &self.head.hash, &rec)?;
        let head = self.write_line(&line, hash)?;
        Ok((head, info))
    }

    /// Writes one complete line with a single `write_all` and syncs it.
    fn write_line(&mut self, line: &[u8], hash: String) -> Result<AuditHead, AuditError> {
        if self.poisoned {
            return Err(AuditError::Io {
                path: self.path.clone(),
                action: "append to audit file",
                source: std::io::Error::other(
                    "an earlier write failed part way; reopen the writer to recover the tail",
                ),
            });
        }

        #[cfg(feature = "failpoints")]
        if super::failpoint::is_set(super::failpoint::PARTIAL_WRITE) {
            let _ = self.file.write_all(&line[..line.len() / 2]);
            let _ = self.file.sync_data();
            std::process::abort();
        }

        if let Err(e) = self.file.write_all(line) {
            self.poisoned = true;
            return Err(AuditError::io(&self.path, "append to audit file", e));
        }

        #[cfg(feature = "failpoints")]
        if super::failpoint::is_set(super::failpoint::BEFORE_SYNC) {
            std::process::abort();
        }

        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(AuditError::io(&self.path, "sync audit file", e));
        }

        #[cfg(feature = "failpoints")]
        if super::failpoint::is_set(super::failpoint::AFTER_WRITE) {
            std::process::abort();
        }

        self.head = AuditHead {
            seq: self.head.seq + 1,
            hash,
            len: self.head.len + line.len() as u64,
        };
        Ok(self.head.clone())
    }

    /// Reads the lines after the head, adopts those that chain, and recovers a torn
    /// last line. Writes only after every complete line has passed its checks.
    fn adopt_tail(&mut self, file_len: u64) -> Result<(), AuditError> {
        let mut chain = Chain::resume(Tip {
            seq: self.head.seq,
            hash: self.head.hash.clone(),
            end: self.head.len,
        });
        let mut reader = BufReader::with_capacity(64 * 1024, &self.file);
        reader
            .seek(SeekFrom::Start(self.head.len))
            .map_err(|e| AuditError::io(&self.path, "seek audit file", e))?;

        let mut offset = self.head.len;
        let mut buf = Vec::new();
        let mut unterminated = false;
        while offset < file_len {
            buf.clear();
            let limit = (file_len - offset).min(MAX_LINE_LEN as u64);
            let n = (&mut reader)
                .take(limit)
                .read_until(b'\n', &mut buf)
                .map_err(|e| AuditError::io(&self.path, "read audit file", e))?;
            if n == 0 {
                break;
            }
            let terminated = buf.last() == Some(&b'\n');
            if !terminated && offset + n as u64 != file_len {
                return Err(self.diverged_at(
                    offset,
                    chain.tip.as_ref().map_or(0, |t| t.seq + 1),
                    "line longer than the line limit".to_owned(),
                    String::new(),
                    String::new(),
                ));
            }
            let line = if terminated { &buf[..n - 1] } else { &buf[..] };
            match chain.feed(line, offset) {
                Ok(Step::Accepted(_)) => self.adopted += 1,
                Ok(Step::Pending) => {}
                Err(failure) => return Err(self.diverged(failure, &chain)),
            }
            unterminated = !terminated;
            offset += n as u64;
        }

        let tip = chain.tip.clone().expect("resumed chain has a tip");
        if unterminated {
            match chain.pending.take() {
                // The last line is complete but for its newline: it was adopted.
                None => {
                    self.write_recovery(b"\n", &tip)?;
                    return Ok(());
                }
                Some(torn) => {
                    let record = recovered_record(
                        torn.offset,
                        torn.length,
                        &torn.sha256,
                        self.actor.clone(),
                    );
                    let (line, hash) = encode_line(tip.seq + 1, &Utc::now(), &tip.hash, &record)?;
                    let mut bytes = Vec::with_capacity(line.len() + 1);
                    bytes.push(b'\n');
                    bytes.extend_from_slice(&line);
                    self.recovered = Some(TornTail {
                        offset: torn.offset,
                        length: torn.length,
                        sha256: torn.sha256,
                    });
                    let new_tip = Tip {
                        seq: tip.seq + 1,
                        hash,
                        end: file_len + bytes.len() as u64,
                    };
                    self.write_recovery(&bytes, &new_tip)?;
                    return Ok(());
                }
            }
        }
        if let Some(torn) = chain.pending.take() {
            return Err(self.diverged(torn.failure, &chain));
        }
        self.set_head(&tip);
        Ok(())
    }

    /// Appends recovery bytes, syncs, and moves the head to `tip`.
    fn write_recovery(&mut self, bytes: &[u8], tip: &Tip) -> Result<(), AuditError> {
        self.file
            .write_all(bytes)
            .map_err(|e| AuditError::io(&self.path, "append to audit file", e))?;
        self.file
            .sync_data()
            .map_err(|e| AuditError::io(&self.path, "sync audit file", e))?;
        self.set_head(tip);
        Ok(())
    }

    fn set_head(&mut self, tip: &Tip) {
        self.head = AuditHead {
            seq: tip.seq,
            hash: tip.hash.clone(),
            len: tip.end,
        };
    }

    fn diverged(&self, failure: LineFailure, chain: &Chain) -> AuditError {
        let seq = failure
            .seq
            .unwrap_or_else(|| chain.tip.as_ref().map_or(0, |t| t.seq + 1));
        self.diverged_at(
            failure.offset,
            seq,
            format!("{}: {}", failure.code, failure.reason),
            failure.expected.unwrap_or_default(),
            failure.found.unwrap_or_default(),
        )
    }

    fn diverged_at(
        &self,
        offset: u64,
        seq: u64,
        reason: String,
        expected: String,
        found: String,
    ) -> AuditError {
        AuditError::Diverged(Box::new(Divergence {
            path: self.path.clone(),
            offset,
            line: None,
            seq,
            reason,
            expected,
            found,
        }))
    }
}

/// Reads and checks the first line, which must be the genesis record.
fn read_genesis(path: &Path, file: &File) -> Result<Genesis, AuditError> {
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| AuditError::io(path, "seek audit file", e))?;
    let mut buf = Vec::new();
    reader
        .take(MAX_LINE_LEN as u64)
        .read_until(b'\n', &mut buf)
        .map_err(|e| AuditError::io(path, "read audit file", e))?;
    let diverged = |reason: String, expected: String, found: String| {
        AuditError::Diverged(Box::new(Divergence {
            path: path.to_owned(),
            offset: 0,
            line: Some(1),
            seq: 0,
            reason,
            expected,
            found,
        }))
    };
    if buf.pop() != Some(b'\n') {
        return Err(diverged(
            "first line is missing or not terminated".to_owned(),
            "log.genesis record".to_owned(),
            String::new(),
        ));
    }
    let mut chain = Chain::new();
    match chain.feed(&buf, 0) {
        Ok(Step::Accepted(_)) => Ok(chain.genesis.expect("first accepted line is genesis")),
        Ok(Step::Pending) => {
            let failure = chain.pending.expect("pending line").failure;
            Err(diverged(failure.reason, String::new(), String::new()))
        }
        Err(failure) => Err(diverged(
            failure.reason,
            failure.expected.unwrap_or_default(),
            failure.found.unwrap_or_default(),
        )),
    }
}

/// Checks that the line ending at `head.len` has the head's seq and hash. Reads
/// backwards from `head.len`, at most one line.
fn check_head_line(path: &Path, file: &File, head: &AuditHead) -> Result<(), AuditError> {
    let (start, line) = read_line_ending_at(path, file, head.len)?;
    let diverged = |reason: &str, expected: String, found: String| {
        AuditError::Diverged(Box::new(Divergence {
            path: path.to_owned(),
            offset: start,
            line: None,
            seq: head.seq,
            reason: reason.to_owned(),
            expected,
            found,
        }))
    };
    let Some(line) = line else {
        return Err(diverged(
            "no complete line ends at the ledger head's length",
            format!("newline at byte {}", head.len.saturating_sub(1)),
            "other byte".to_owned(),
        ));
    };
    let parsed = check_line(&line, 0).map_err(|f| {
        diverged(
            &format!(
                "line at the ledger head is invalid: {}: {}",
                f.code, f.reason
            ),
            f.expected.unwrap_or_default(),
            f.found.unwrap_or_default(),
        )
    })?;
    if parsed.h != head.hash {
        return Err(diverged(
            "line at the ledger head has another hash",
            head.hash.clone(),
            parsed.h.to_owned(),
        ));
    }
    if parsed.seq != head.seq {
        return Err(diverged(
            "line at the ledger head has another seq",
            head.seq.to_string(),
            parsed.seq.to_string(),
        ));
    }
    Ok(())
}

/// Reads the line whose newline is the byte before `end`. Returns its start offset
/// and its bytes without the newline, or `None` when byte `end - 1` is not a newline
/// or no line start is found within the line limit.
fn read_line_ending_at(
    path: &Path,
    file: &File,
    end: u64,
) -> Result<(u64, Option<Vec<u8>>), AuditError> {
    const CHUNK: u64 = 4096;
    if end == 0 {
        return Ok((0, None));
    }
    let read_at = |offset: u64, len: u64| -> Result<Vec<u8>, AuditError> {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| AuditError::io(path, "read audit file", e))?;
        Ok(buf)
    };
    if read_at(end - 1, 1)?[0] != b'\n' {
        return Ok((end - 1, None));
    }

    // Bytes of the line found so far, in file order, excluding the newline.
    let body_end = end - 1;
    let mut start = body_end;
    let mut line: Vec<u8> = Vec::new();
    while start > 0 && body_end - start < MAX_LINE_LEN as u64 {
        let chunk_start = start.saturating_sub(CHUNK);
        let chunk = read_at(chunk_start, start - chunk_start)?;
        if let Some(nl) = chunk.iter().rposition(|&b| b == b'\n') {
            let mut joined = chunk[nl + 1..].to_vec();
            joined.extend_from_slice(&line);
            return Ok((chunk_start + nl as u64 + 1, Some(joined)));
        }
        let mut joined = chunk;
        joined.extend_from_slice(&line);
        line = joined;
        start = chunk_start;
    }
    if start == 0 {
        Ok((0, Some(line)))
    } else {
        Ok((start, None))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};

    use chrono::TimeZone;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::audit::{Code, Detail, ErrorKind, Outcome, VerifyOptions, key_fingerprint, verify};

    fn test_key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    fn ts(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, second).unwrap()
    }

    fn record(n: u64) -> Record {
        Record {
            run: "run-1".to_owned(),
            domain: "payments".to_owned(),
            event: "rotation.step".to_owned(),
            actor: Actor::current(),
            key: None,
            outcome: Outcome::Ok,
            detail: Detail::new().with("n", n),
        }
    }

    fn new_log(dir: &tempfile::TempDir) -> (PathBuf, AuditHead) {
        let path = dir.path().join("audit.jsonl");
        let fingerprint = key_fingerprint(test_key().verifying_key());
        let head = create_genesis(&path, "log-1", &fingerprint, ts(0)).unwrap();
        (path, head)
    }

    fn verify_ok(path: &Path) -> crate::audit::Report {
        let opts = VerifyOptions {
            pubkey: Some(*test_key().verifying_key()),
            ..VerifyOptions::default()
        };
        let report = verify(path, &opts).unwrap();
        assert_eq!(report.failure, None, "{}", report.to_text());
        report
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    #[test]
    fn genesis_creates_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(head.seq, 0);
        assert_eq!(head.len, std::fs::metadata(&path).unwrap().len());
        let report = verify_ok(&path);
        assert_eq!(report.head, Some(head));
    }

    #[test]
    fn genesis_rejects_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = new_log(&dir);
        let fingerprint = key_fingerprint(test_key().verifying_key());
        let err = create_genesis(&path, "log-1", &fingerprint, ts(0)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
    }

    #[test]
    fn append_extends_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let mut writer = AuditWriter::open(&path, &head).unwrap();
        let mut last = head;
        for n in 1..=5 {
            last = writer.append_at(&record(n), ts(n as u32)).unwrap();
            assert_eq!(last.seq, n);
        }
        drop(writer);
        assert_eq!(last.len, std::fs::metadata(&path).unwrap().len());
        let report = verify_ok(&path);
        assert_eq!(report.lines_verified, 6);
        assert_eq!(report.head, Some(last));
    }

    #[test]
    fn append_rejects_reserved_event() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let mut writer = AuditWriter::open(&path, &head).unwrap();
        let mut rec = record(1);
        rec.event = "log.genesis".to_owned();
        let err = writer.append(&rec).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn checkpoint_signs_head() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let mut writer = AuditWriter::open(&path, &head).unwrap();
        let before = writer.append_at(&record(1), ts(1)).unwrap();
        let key = test_key();
        let mut signer = |digest: &[u8; 32]| -> Result<[u8; 64], String> {
            let sig: p256::ecdsa::Signature =
                key.sign_prehash(digest).map_err(|e| e.to_string())?;
            Ok(sig.to_bytes().into())
        };
        let (after, info) = writer.checkpoint(&mut signer, "run-1", ts(2)).unwrap();
        drop(writer);
        assert_eq!(info.seq, before.seq);
        assert_eq!(info.size, before.len);
        assert_eq!(info.head, before.hash);
        assert_eq!(info.line_seq, after.seq);
        let report = verify_ok(&path);
        assert_eq!(report.checkpoints, 1);
        assert_eq!(report.last_checkpoint_seq, Some(2));
        assert_eq!(report.unsealed_lines, 0);

        let other = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let opts = VerifyOptions {
            pubkey: Some(*other.verifying_key()),
            ..VerifyOptions::default()
        };
        let failure = verify(&path, &opts).unwrap().failure.unwrap();
        assert_eq!(failure.code, Code::Sig);
        assert_eq!(failure.line, 1);
    }

    #[test]
    fn checkpoint_reports_signer_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let mut writer = AuditWriter::open(&path, &head).unwrap();
        let mut signer = |_: &[u8; 32]| -> Result<[u8; 64], String> { Err("token".into()) };
        let err = writer.checkpoint(&mut signer, "run-1", ts(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Signer);
        assert_eq!(writer.head(), &head);
    }

    #[test]
    fn open_adopts_lines_after_head() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let mut writer = AuditWriter::open(&path, &head).unwrap();
        writer.append_at(&record(1), ts(1)).unwrap();
        let newest = writer.append_at(&record(2), ts(2)).unwrap();
        drop(writer);

        let writer = AuditWriter::open(&path, &head).unwrap();
        assert_eq!(writer.adopted(), 2);
        assert_eq!(writer.head(), &newest);
        assert_eq!(writer.recovered(), None);
    }

    #[test]
    fn open_recovers_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let (line, _) = encode_line(1, &ts(1), &head.hash, &record(1)).unwrap();
        let torn = &line[..line.len() / 2];
        append_bytes(&path, torn);

        let writer = AuditWriter::open(&path, &head).unwrap();
        let recovered = writer.recovered().unwrap().clone();
        assert_eq!(recovered.offset, head.len);
        assert_eq!(recovered.length, torn.len() as u64);
        assert_eq!(recovered.sha256, hex::encode(Sha256::digest(torn)));
        assert_eq!(writer.head().seq, 1);
        let new_head = writer.head().clone();
        drop(writer);

        let report = verify_ok(&path);
        assert_eq!(report.torn_lines_recovered, 1);
        assert_eq!(report.total_lines, 3);
        assert_eq!(report.head, Some(new_head.clone()));

        // A run that crashed after the recovery but before the ledger update.
        let writer = AuditWriter::open(&path, &head).unwrap();
        assert_eq!(writer.head(), &new_head);
        assert_eq!(writer.adopted(), 1);
    }

    #[test]
    fn open_adopts_line_missing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let (line, hash) = encode_line(1, &ts(1), &head.hash, &record(1)).unwrap();
        append_bytes(&path, &line[..line.len() - 1]);

        let writer = AuditWriter::open(&path, &head).unwrap();
        assert_eq!(writer.adopted(), 1);
        assert_eq!(writer.recovered(), None);
        assert_eq!(writer.head().hash, hash);
        assert_eq!(writer.head().len, std::fs::metadata(&path).unwrap().len());
        drop(writer);
        verify_ok(&path);
    }

    #[test]
    fn open_detects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let mut writer = AuditWriter::open(&path, &head).unwrap();
        let newest = writer.append_at(&record(1), ts(1)).unwrap();
        drop(writer);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(head.len)
            .unwrap();

        let err = AuditWriter::open(&path, &newest).unwrap_err();
        assert!(matches!(err, AuditError::Truncated { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Inconsistent);
    }

    #[test]
    fn open_detects_wrong_head_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let before = std::fs::read(&path).unwrap();
        let wrong = AuditHead {
            hash: "ab".repeat(32),
            ..head
        };
        let err = AuditWriter::open(&path, &wrong).unwrap_err();
        assert!(matches!(err, AuditError::Diverged(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::Inconsistent);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn open_detects_head_not_at_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let wrong = AuditHead {
            len: head.len - 3,
            ..head
        };
        let err = AuditWriter::open(&path, &wrong).unwrap_err();
        assert!(matches!(err, AuditError::Diverged(_)), "{err}");
    }

    #[test]
    fn open_rejects_unchained_line_after_head() {
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let (line, _) = encode_line(2, &ts(1), &head.hash, &record(1)).unwrap();
        append_bytes(&path, &line);
        let before = std::fs::read(&path).unwrap();

        let err = AuditWriter::open(&path, &head).unwrap_err();
        let AuditError::Diverged(divergence) = &err else {
            panic!("expected Diverged, got {err}");
        };
        assert_eq!(divergence.offset, head.len);
        assert_eq!(divergence.seq, 2);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn open_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let head = AuditHead {
            seq: 0,
            hash: super::super::ZERO_HASH.to_owned(),
            len: 1,
        };
        let err = AuditWriter::open(&dir.path().join("none"), &head).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    /// Eight threads with their own writers, like eight processes, append to one file
    /// while sharing a simulated ledger head that may be stale when a writer opens.
    #[test]
    fn parallel_writers_keep_one_chain() {
        const THREADS: u64 = 8;
        const APPENDS: u64 = 25;
        let dir = tempfile::tempdir().unwrap();
        let (path, head) = new_log(&dir);
        let ledger = Arc::new(Mutex::new(head));

        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let path = path.clone();
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    for n in 0..APPENDS {
                        let known = ledger.lock().unwrap().clone();
                        let mut writer = AuditWriter::open(&path, &known).unwrap();
                        let mut rec = record(t * 1000 + n);
                        rec.domain = format!("domain-{t}");
                        let new_head = writer.append(&rec).unwrap();
                        let mut stored = ledger.lock().unwrap();
                        if new_head.seq > stored.seq {
                            *stored = new_head;
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }

        let report = verify_ok(&path);
        assert_eq!(report.lines_verified, 1 + THREADS * APPENDS);
        assert_eq!(report.head.as_ref(), Some(&*ledger.lock().unwrap()));
    }
}
