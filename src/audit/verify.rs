//! Streaming verifier of an audit file, behind `audit-verify`. It reads the file once
//! through a fixed-size buffer, so memory stays flat whatever the file size, and it
//! never writes the audit file. Only the optional state file is written, after a
//! fully successful pass.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::chain::Code;
use super::chain::{Chain, LineFailure, Step, detail_map};
use super::checkpoint::{checkpoint_digest, key_fingerprint, verify_signature};
use super::format::is_lower_hex;
use super::scan::ParsedLine;
use super::{AuditError, AuditHead, EVENT_CHECKPOINT, EVENT_RECOVERED, MAX_LINE_LEN};

/// Read buffer size of the verifier.
const READ_BUFFER: usize = 256 * 1024;

/// Format name written into the state file.
const STATE_FORMAT: &str = "keyrot.audit-verify-state.v1";

/// Optional anchors that let `verify` detect a file cut short, rolled back or forked,
/// and the key that checkpoint signatures are checked with.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Checkpoint public key. Without it, signatures are not checked.
    pub pubkey: Option<VerifyingKey>,
    /// Head recorded in the ledger: the file must contain this line.
    pub ledger_head: Option<AuditHead>,
    /// State file remembering the last verified checkpoint. It is created or updated
    /// after a successful pass that saw a checkpoint.
    pub state: Option<PathBuf>,
}

/// First failing check of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub file: String,
    /// 1-based line number. A file that ends too early names the line after its last.
    pub line: u64,
    /// Byte offset of the line's first byte.
    pub offset: u64,
    /// The line's `seq`, when the line is readable far enough to tell.
    pub seq: Option<u64>,
    pub code: Code,
    pub reason: String,
    pub expected: Option<String>,
    pub found: Option<String>,
}

impl fmt::Display for Failure {
    /// Formats `FILE:LINE: seq=N: CODE: reason (expected …, found …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: seq=", self.file, self.line)?;
        match self.seq {
            Some(seq) => write!(f, "{seq}")?,
            None => f.write_str("?")?,
        }
        write!(f, ": {}: {}", self.code, self.reason)?;
        if let (Some(expected), Some(found)) = (&self.expected, &self.found) {
            write!(f, " (expected {expected}, found {found})")?;
        }
        Ok(())
    }
}

/// Outcome of a verification pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub file: String,
    /// Lines in the file, counting a final line without a newline.
    pub total_lines: u64,
    /// Lines that passed every check.
    pub lines_verified: u64,
    /// Torn lines accepted because a `log.recovered` record names them.
    pub torn_lines_recovered: u64,
    /// Last verified line.
    pub head: Option<AuditHead>,
    pub checkpoints: u64,
    /// `seq` of the last `log.checkpoint` line.
    pub last_checkpoint_seq: Option<u64>,
    /// Verified lines after the last checkpoint, which no signature covers yet.
    pub unsealed_lines: u64,
    /// Whether checkpoint signatures were checked against a public key.
    pub signatures_checked: bool,
    pub ledger_head_checked: bool,
    /// Whether an existing state file was compared with the chain.
    pub state_checked: bool,
    pub state_updated: bool,
    pub failure: Option<Failure>,
    /// Lines after the failing line that were not checked.
    pub unverified_lines: u64,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.failure.is_none()
    }

    /// Formats the report for people: the failure line first when there is one.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(failure) = &self.failure {
            out.push_str(&format!("{failure}\n"));
            out.push_str(&format!(
                "{}: {} lines verified before the failure, {} lines after it left unverified\n",
                self.file, self.lines_verified, self.unverified_lines
            ));
            return out;
        }
        out.push_str(&format!(
            "{}: OK: {} lines verified, {} torn lines recovered, {} checkpoints",
            self.file, self.lines_verified, self.torn_lines_recovered, self.checkpoints
        ));
        match self.last_checkpoint_seq {
            Some(seq) => out.push_str(&format!(
                ", last checkpoint seq={seq}, {} lines after it unsealed\n",
                self.unsealed_lines
            )),
            None => out.push_str(&format!(", {} lines unsealed\n", self.unsealed_lines)),
        }
        if self.signatures_checked {
            out.push_str("checkpoint signatures checked with the given public key\n");
        } else {
            out.push_str(
                "checkpoint signatures NOT checked: no public key given, so a rewritten \
                 chain would pass\n",
            );
        }
        if !self.ledger_head_checked && !self.state_checked {
            out.push_str(
                "no ledger head or state file given: a file cut at a line boundary would pass\n",
            );
        }
        out
    }
}

/// Last verified checkpoint, as the state file stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: String,
    log_id: String,
    /// `seq` of the `log.checkpoint` line.
    checkpoint_seq: u64,
    /// Byte offset just after the checkpoint line's newline.
    checkpoint_end: u64,
    /// `h` of the checkpoint line.
    checkpoint_hash: String,
    /// Head the checkpoint signs: its seq, file size and hash.
    signed_seq: u64,
    signed_size: u64,
    signed_head: String,
}

/// Reads a P-256 public key from a PEM file (`-----BEGIN PUBLIC KEY-----`).
pub fn read_public_key_pem(path: &Path) -> Result<VerifyingKey, AuditError> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| AuditError::io(path, "read public key", e))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| AuditError::InvalidState {
        path: path.to_owned(),
        reason: format!("not a P-256 public key in PEM form: {e}"),
    })
}

/// Verifies the audit file at `path`. A chain that fails a check is returned as a
/// report with `failure` set. `Err` means a file could not be read:
/// [`AuditError::NotFound`] for a missing audit file, [`AuditError::Io`] for a read
/// error, [`AuditError::InvalidState`] for an unreadable state file.
pub fn verify(path: &Path, opts: &VerifyOptions) -> Result<Report, AuditError> {
    let file = File::open(path).map_err(|e| AuditError::io(path, "open audit file", e))?;
    let state = match &opts.state {
        Some(state_path) => load_state(state_path)?,
        None => None,
    };
    let mut run = Verification {
        opts,
        state,
        report: Report {
            file: path.display().to_string(),
            total_lines: 0,
            lines_verified: 0,
            torn_lines_recovered: 0,
            head: None,
            checkpoints: 0,
            last_checkpoint_seq: None,
            unsealed_lines: 0,
            signatures_checked: opts.pubkey.is_some(),
            ledger_head_checked: opts.ledger_head.is_some(),
            state_checked: false,
            state_updated: false,
            failure: None,
            unverified_lines: 0,
        },
        chain: Chain::new(),
        ledger_head_seen: false,
        state_checkpoint_seen: false,
        last_checkpoint: None,
    };
    run.report.state_checked = run.state.is_some();

    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let read_error = |e| AuditError::io(path, "read audit file", e);
    let failure = run.read_lines(&mut reader).map_err(read_error)?;

    match failure {
        Some(failure) => {
            let rest = count_lines(&mut reader).map_err(read_error)?;
            // A failure at the end of the file names the line after the last one.
            run.report.unverified_lines = run.chain.lines.saturating_sub(failure.line) + rest;
            run.report.total_lines = run.chain.lines + rest;
            run.report.failure = Some(run.located(failure));
        }
        None => {
            run.report.total_lines = run.chain.lines;
            if let Some(new_state) = &run.last_checkpoint
                && let Some(state_path) = &opts.state
            {
                save_state(state_path, new_state)?;
                run.report.state_updated = true;
            }
        }
    }
    Ok(run.report)
}

struct Verification<'o> {
    opts: &'o VerifyOptions,
    state: Option<State>,
    report: Report,
    chain: Chain,
    ledger_head_seen: bool,
    state_checkpoint_seen: bool,
    last_checkpoint: Option<State>,
}

impl Verification<'_> {
    /// Reads and checks lines until the end of the file or the first failure.
    /// Returns the failure, if any. `Err` is a read error.
    fn read_lines(&mut self, reader: &mut BufReader<File>) -> std::io::Result<Option<LineFailure>> {
        let mut buf = Vec::with_capacity(4096);
        let mut offset = 0u64;
        loop {
            buf.clear();
            let n = reader
                .by_ref()
                .take(MAX_LINE_LEN as u64)
                .read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Ok(self.check_end());
            }
            if buf.last() != Some(&b'\n') {
                self.chain.lines += 1;
                let line_no = self.chain.lines;
                if let Some(pending) = self.chain.pending.take() {
                    return Ok(Some(pending.failure));
                }
                let failure = if n == MAX_LINE_LEN {
                    reader.skip_until(b'\n')?;
                    LineFailure::new(
                        line_no,
                        super::scan::peek_seq(&buf),
                        Code::Parse,
                        format!("line longer than {MAX_LINE_LEN} bytes"),
                    )
                } else {
                    LineFailure::new(
                        line_no,
                        super::scan::peek_seq(&buf),
                        Code::Torn,
                        "last line has no newline: a torn write that no log.recovered \
                         record names",
                    )
                };
                return Ok(Some(LineFailure { offset, ..failure }));
            }

            let line = &buf[..n - 1];
            let step = self.chain.feed(line, offset);
            match step {
                Ok(Step::Accepted(parsed)) => {
                    let end = offset + n as u64;
                    if let Err(failure) = self.check_accepted(&parsed, offset, end) {
                        return Ok(Some(LineFailure { offset, ..failure }));
                    }
                }
                Ok(Step::Pending) => {}
                Err(failure) => return Ok(Some(failure)),
            }
            offset += n as u64;
        }
    }

    /// Runs the checks that need more than the chain: checkpoints, the ledger head
    /// and the state file.
    fn check_accepted(
        &mut self,
        parsed: &ParsedLine<'_>,
        offset: u64,
        end: u64,
    ) -> Result<(), LineFailure> {
        let line_no = self.chain.lines;
        let seq = Some(parsed.seq);
        self.report.lines_verified += 1;
        match &mut self.report.head {
            Some(head) => {
                head.seq = parsed.seq;
                head.hash.clear();
                head.hash.push_str(parsed.h);
                head.len = end;
            }
            None => {
                self.report.head = Some(AuditHead {
                    seq: parsed.seq,
                    hash: parsed.h.to_owned(),
                    len: end,
                })
            }
        }

        if parsed.seq == 0 {
            self.check_genesis_key(line_no)?;
        }
        if parsed.event == EVENT_RECOVERED {
            self.report.torn_lines_recovered += 1;
        }
        if parsed.event == EVENT_CHECKPOINT {
            self.check_checkpoint(parsed, line_no, offset, end)?;
        } else {
            self.report.unsealed_lines += 1;
        }

        if let Some(head) = &self.opts.ledger_head
            && head.seq == parsed.seq
        {
            self.ledger_head_seen = true;
            if head.hash != parsed.h || head.len != end {
                return Err(LineFailure::new(
                    line_no,
                    seq,
                    Code::Fork,
                    "line at the ledger head's seq differs from the ledger head",
                )
                .values(
                    format!("hash {} ending at byte {}", head.hash, head.len),
                    format!("hash {} ending at byte {end}", parsed.h),
                ));
            }
        }

        if let Some(state) = &self.state
            && state.checkpoint_seq == parsed.seq
        {
            self.state_checkpoint_seen = true;
            if state.checkpoint_hash != parsed.h || state.checkpoint_end != end {
                return Err(LineFailure::new(
                    line_no,
                    seq,
                    Code::Fork,
                    "line differs from the checkpoint recorded in the state file",
                )
                .values(
                    format!(
                        "hash {} ending at byte {}",
                        state.checkpoint_hash, state.checkpoint_end
                    ),
                    format!("hash {} ending at byte {end}", parsed.h),
                ));
            }
        }
        Ok(())
    }

    /// Compares the genesis record with the public key and the state file.
    fn check_genesis_key(&self, line_no: u64) -> Result<(), LineFailure> {
        let genesis = self.chain.genesis.as_ref().expect("chain checked genesis");
        if let Some(key) = &self.opts.pubkey {
            let fingerprint = key_fingerprint(key);
            if fingerprint != genesis.key_fingerprint {
                return Err(LineFailure::new(
                    line_no,
                    Some(0),
                    Code::Sig,
                    "log.genesis names another checkpoint key than the given public key",
                )
                .values(fingerprint, genesis.key_fingerprint.clone()));
            }
        }
        if let Some(state) = &self.state
            && state.log_id != genesis.log_id
        {
            return Err(LineFailure::new(
                line_no,
                Some(0),
                Code::Fork,
                "log id differs from the one in the state file",
            )
            .values(state.log_id.clone(), genesis.log_id.clone()));
        }
        Ok(())
    }

    /// Checks a `log.checkpoint` line: it must sign the line before it, name the
    /// genesis key, and carry a valid signature when a public key is given.
    fn check_checkpoint(
        &mut self,
        parsed: &ParsedLine<'_>,
        line_no: u64,
        offset: u64,
        end: u64,
    ) -> Result<(), LineFailure> {
        let seq = Some(parsed.seq);
        let fail = |code: Code, reason: &str| LineFailure::new(line_no, seq, code, reason);
        let detail = detail_map(parsed.detail);
        let signed_seq = detail.get("seq").and_then(Value::as_u64);
        let size = detail.get("size").and_then(Value::as_u64);
        let head = detail.get("head").and_then(Value::as_str);
        let ts = detail.get("ts").and_then(Value::as_str);
        let sig = detail.get("sig").and_then(Value::as_str);
        let key = detail.get("key").and_then(Value::as_str);
        let (Some(signed_seq), Some(size), Some(head), Some(ts), Some(sig), Some(key)) =
            (signed_seq, size, head, ts, sig, key)
        else {
            return Err(fail(
                Code::Checkpoint,
                "log.checkpoint detail must hold seq, size, head, ts, sig and key",
            ));
        };
        if detail.len() != 6 || !is_lower_hex(sig.as_bytes(), 128) {
            return Err(fail(
                Code::Checkpoint,
                "log.checkpoint detail has extra fields or a sig that is not 64 bytes of hex",
            ));
        }

        let expected = format!("seq {} size {offset} head {}", parsed.seq - 1, parsed.prev);
        let found = format!("seq {signed_seq} size {size} head {head}");
        if signed_seq + 1 != parsed.seq || size != offset || head != parsed.prev {
            return Err(fail(
                Code::Checkpoint,
                "checkpoint does not sign the line before it",
            )
            .values(expected, found));
        }
        // NOTE: one checkpoint key per log. A log that changes its checkpoint key
        // needs a key-change record that this verifier does not know yet.
        let genesis = self.chain.genesis.as_ref().expect("chain checked genesis");
        if key != genesis.key_fingerprint {
            return Err(fail(
                Code::Checkpoint,
                "checkpoint names another key than log.genesis",
            )
            .values(genesis.key_fingerprint.clone(), key));
        }
        // NOTE: signatures are checked on the reading thread. At one checkpoint per
        // 1,000 lines they took about a quarter of the verification time in
        // scripts/bench-audit-verify.sh, so a second thread would speed this up.
        if let Some(pubkey) = &self.opts.pubkey {
            let Some(digest) = checkpoint_digest(signed_seq, head, size, ts) else {
                return Err(fail(
                    Code::Checkpoint,
                    "checkpoint head is not 64 hex digits",
                ));
            };
            if let Err(reason) = verify_signature(pubkey, &digest, sig) {
                return Err(fail(Code::Sig, &reason));
            }
        }

        self.report.checkpoints += 1;
        self.report.last_checkpoint_seq = Some(parsed.seq);
        self.report.unsealed_lines = 0;
        self.last_checkpoint = Some(State {
            format: STATE_FORMAT.to_owned(),
            log_id: genesis.log_id.clone(),
            checkpoint_seq: parsed.seq,
            checkpoint_end: end,
            checkpoint_hash: parsed.h.to_owned(),
            signed_seq,
            signed_size: size,
            signed_head: head.to_owned(),
        });
        Ok(())
    }

    /// Checks at the end of the file: an empty file, a failed last line, and anchors
    /// that the file never reached.
    fn check_end(&mut self) -> Option<LineFailure> {
        let lines = self.chain.lines;
        if lines == 0 {
            return Some(LineFailure::new(
                1,
                None,
                Code::Empty,
                "audit file is empty",
            ));
        }
        if let Some(pending) = self.chain.pending.take() {
            return Some(pending.failure);
        }
        let tip = self.chain.tip.as_ref()?;
        let missing = |code: Code, reason: String, expected: String| {
            Some(LineFailure {
                offset: tip.end,
                ..LineFailure::new(lines + 1, Some(tip.seq + 1), code, reason).values(
                    expected,
                    format!("file ends after seq {} at byte {}", tip.seq, tip.end),
                )
            })
        };
        if let Some(head) = &self.opts.ledger_head
            && !self.ledger_head_seen
        {
            return missing(
                Code::Truncated,
                "file ends before the ledger head".to_owned(),
                format!("seq {} ending at byte {}", head.seq, head.len),
            );
        }
        if let Some(state) = &self.state
            && !self.state_checkpoint_seen
        {
            return missing(
                Code::Rollback,
                "file ends before the checkpoint recorded in the state file".to_owned(),
                format!(
                    "checkpoint seq {} ending at byte {}",
                    state.checkpoint_seq, state.checkpoint_end
                ),
            );
        }
        None
    }

    fn located(&self, failure: LineFailure) -> Failure {
        Failure {
            file: self.report.file.clone(),
            line: failure.line,
            offset: failure.offset,
            seq: failure.seq,
            code: failure.code,
            reason: failure.reason,
            expected: failure.expected,
            found: failure.found,
        }
    }
}

/// Counts the lines left in `reader`, a final line without a newline included.
fn count_lines(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut lines = 0u64;
    let mut ends_with_newline = true;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        ends_with_newline = chunk.last() == Some(&b'\n');
        let len = chunk.len();
        reader.consume(len);
    }
    Ok(lines + u64::from(!ends_with_newline))
}

/// Reads the state file. A missing file means no earlier verified checkpoint.
fn load_state(path: &Path) -> Result<Option<State>, AuditError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::io(path, "read state file", e)),
    };
    let invalid = |reason: String| AuditError::InvalidState {
        path: path.to_owned(),
        reason,
    };
    let state: State = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if state.format != STATE_FORMAT {
        return Err(invalid(format!(
            "format {:?} is not {STATE_FORMAT:?}",
            state.format
        )));
    }
    Ok(Some(state))
}

/// Replaces the state file atomically: writes a temporary file with mode 0600 in the
/// same directory, syncs it, renames it over the old one and syncs the directory.
fn save_state(path: &Path, state: &State) -> Result<(), AuditError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.unwrap_or_else(|| "state".to_owned()),
        std::process::id()
    ));
    let mut json = serde_json::to_vec_pretty(state).expect("state serialises");
    json.push(b'\n');

    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        AuditError::io(path, "write state file", e)
    })
}
