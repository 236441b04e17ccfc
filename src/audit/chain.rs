//! Chain rules shared by the writer, which checks lines that appeared after the
//! ledger head, and the verifier: per-line hash, sequence, `prev` links, the genesis
//! record, and torn lines named by a following `log.recovered` record.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::format::{hex_digest, is_lower_hex, line_hash};
use super::scan::{ParsedLine, parse_line, peek_seq};
use super::{EVENT_GENESIS, EVENT_RECOVERED, FORMAT, ZERO_HASH};

/// Verification failure codes, as `audit-verify` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Code {
    /// The line is not a valid audit line: bad JSON, unknown or duplicate field,
    /// float, or longer than the line limit.
    #[serde(rename = "E_PARSE")]
    Parse,
    /// `h` is not the hash of the line's bytes.
    #[serde(rename = "E_HASH")]
    Hash,
    /// `prev` is not the previous line's `h`.
    #[serde(rename = "E_PREV")]
    Prev,
    /// `seq` does not follow the previous line's.
    #[serde(rename = "E_SEQ")]
    Seq,
    /// The first line is not a valid `log.genesis` record, or one appears later.
    #[serde(rename = "E_GENESIS")]
    Genesis,
    /// A torn line without a `log.recovered` record naming it, or a recovery record
    /// that names no torn line.
    #[serde(rename = "E_TORN")]
    Torn,
    /// The file ends before the ledger head.
    #[serde(rename = "E_TRUNCATED")]
    Truncated,
    /// A line that the ledger head or the state file names has another hash.
    #[serde(rename = "E_FORK")]
    Fork,
    /// The file ends before the checkpoint recorded in the state file.
    #[serde(rename = "E_ROLLBACK")]
    Rollback,
    /// A checkpoint signature does not verify, or the checkpoint key is not the
    /// given public key.
    #[serde(rename = "E_SIG")]
    Sig,
    /// A checkpoint's seq, size, head or key does not match the chain.
    #[serde(rename = "E_CHECKPOINT")]
    Checkpoint,
    /// The file is empty.
    #[serde(rename = "E_EMPTY")]
    Empty,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Parse => "E_PARSE",
            Code::Hash => "E_HASH",
            Code::Prev => "E_PREV",
            Code::Seq => "E_SEQ",
            Code::Genesis => "E_GENESIS",
            Code::Torn => "E_TORN",
            Code::Truncated => "E_TRUNCATED",
            Code::Fork => "E_FORK",
            Code::Rollback => "E_ROLLBACK",
            Code::Sig => "E_SIG",
            Code::Checkpoint => "E_CHECKPOINT",
            Code::Empty => "E_EMPTY",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed check on one line, without the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineFailure {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset of the line's first byte.
    pub offset: u64,
    pub seq: Option<u64>,
    pub code: Code,
    pub reason: String,
    pub expected: Option<String>,
    pub found: Option<String>,
}

impl LineFailure {
    pub fn new(line: u64, seq: Option<u64>, code: Code, reason: impl Into<String>) -> Self {
        LineFailure {
            line,
            offset: 0,
            seq,
            code,
            reason: reason.into(),
            expected: None,
            found: None,
        }
    }

    pub fn values(mut self, expected: impl Into<String>, found: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self.found = Some(found.into());
        self
    }
}

/// Last accepted line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tip {
    pub seq: u64,
    pub hash: String,
    /// Byte offset just after the line's newline.
    pub end: u64,
}

/// Fields that the genesis record names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Genesis {
    pub log_id: String,
    pub key_fingerprint: String,
}

/// A line that failed its checks and is accepted only if the next line is a
/// `log.recovered` record naming it.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
    pub failure: LineFailure,
}

/// Result of feeding one line.
pub(crate) enum Step<'a> {
    /// The line is valid and chained; it is the new tip.
    Accepted(ParsedLine<'a>),
    /// The line failed its checks; whether it is a recovered torn line depends on the
    /// next line.
    Pending,
}

/// Chain state while reading lines in order.
pub(crate) struct Chain {
    pub tip: Option<Tip>,
    pub genesis: Option<Genesis>,
    pub pending: Option<Pending>,
    /// Number of lines fed so far.
    pub lines: u64,
}

impl Chain {
    /// Starts at the beginning of a file.
    pub fn new() -> Chain {
        Chain {
            tip: None,
            genesis: None,
            pending: None,
            lines: 0,
        }
    }

    /// Continues after a known tip, such as the ledger head. Line numbers are then
    /// counted from the tip.
    pub fn resume(tip: Tip) -> Chain {
        Chain {
            tip: Some(tip),
            ..Chain::new()
        }
    }

    /// Checks one newline-terminated line, given without its newline, that starts at
    /// byte `offset`.
    pub fn feed<'a>(&mut self, line: &'a [u8], offset: u64) -> Result<Step<'a>, LineFailure> {
        self.feed_line(line, offset).map_err(|mut failure| {
            if failure.line == self.lines {
                failure.offset = offset;
            }
            failure
        })
    }

    fn feed_line<'a>(&mut self, line: &'a [u8], offset: u64) -> Result<Step<'a>, LineFailure> {
        self.lines += 1;
        let line_no = self.lines;
        let parsed = match check_line(line, line_no) {
            Ok(parsed) => parsed,
            Err(mut failure) => {
                if let Some(earlier) = self.pending.take() {
                    return Err(earlier.failure);
                }
                failure.offset = offset;
                self.pending = Some(Pending {
                    offset,
                    length: line.len() as u64,
                    sha256: hex::encode(Sha256::digest(line)),
                    failure,
                });
                return Ok(Step::Pending);
            }
        };
        let seq = Some(parsed.seq);

        match self.pending.take() {
            Some(torn) => check_recovery(&parsed, &torn, line_no)?,
            None if parsed.event == EVENT_RECOVERED => {
                return Err(LineFailure::new(
                    line_no,
                    seq,
                    Code::Torn,
                    "log.recovered record, but the line before it is not torn",
                ));
            }
            None => {}
        }

        if self.tip.is_none() || parsed.seq == 0 || parsed.event == EVENT_GENESIS {
            self.check_genesis(&parsed, line_no)?;
        }

        let (expected_seq, expected_prev) = match &self.tip {
            Some(tip) => (tip.seq + 1, tip.hash.as_str()),
            None => (0, ZERO_HASH),
        };
        if parsed.seq != expected_seq {
            return Err(LineFailure::new(line_no, seq, Code::Seq, "sequence gap")
                .values(expected_seq.to_string(), parsed.seq.to_string()));
        }
        if parsed.prev != expected_prev {
            return Err(LineFailure::new(
                line_no,
                seq,
                Code::Prev,
                "prev is not the previous line's hash",
            )
            .values(expected_prev, parsed.prev));
        }

        let end = offset + line.len() as u64 + 1;
        match &mut self.tip {
            // Reuses the hash buffer because this runs once a line.
            Some(tip) => {
                tip.seq = parsed.seq;
                tip.hash.clear();
                tip.hash.push_str(parsed.h);
                tip.end = end;
            }
            None => {
                self.tip = Some(Tip {
                    seq: parsed.seq,
                    hash: parsed.h.to_owned(),
                    end,
                });
            }
        }
        Ok(Step::Accepted(parsed))
    }

    /// Checks that the genesis record is the first line and is well formed, and
    /// remembers what it names.
    fn check_genesis(&mut self, parsed: &ParsedLine<'_>, line_no: u64) -> Result<(), LineFailure> {
        let fail = |reason: &str| {
            Err(LineFailure::new(
                line_no,
                Some(parsed.seq),
                Code::Genesis,
                reason,
            ))
        };
        if self.tip.is_some() {
            return fail("log.genesis record after the first line");
        }
        if parsed.event != EVENT_GENESIS {
            return Err(LineFailure::new(
                line_no,
                Some(parsed.seq),
                Code::Genesis,
                "first line is not a log.genesis record",
            )
            .values(EVENT_GENESIS, parsed.event));
        }
        if parsed.seq != 0 || parsed.prev != ZERO_HASH {
            return fail("log.genesis record must have seq 0 and prev of 64 zeros");
        }
        if !parsed.domain.is_empty() {
            return fail("log.genesis record must have an empty domain");
        }
        let detail = detail_map(parsed.detail);
        let format = detail.get("format").and_then(Value::as_str);
        let log_id = detail.get("log_id").and_then(Value::as_str);
        let key = detail.get("checkpoint_key").and_then(Value::as_str);
        match (format, log_id, key) {
            (Some(FORMAT), Some(log_id), Some(key))
                if detail.len() == 3 && !log_id.is_empty() && is_lower_hex(key.as_bytes(), 64) =>
            {
                self.genesis = Some(Genesis {
                    log_id: log_id.to_owned(),
                    key_fingerprint: key.to_owned(),
                });
                Ok(())
            }
            _ => fail(
                "log.genesis detail must hold exactly format \"keyrot.audit.v1\", a non-empty \
                 log_id and a 64-hex-digit checkpoint_key",
            ),
        }
    }
}

/// Parses a line and checks its hash.
pub(crate) fn check_line(line: &[u8], line_no: u64) -> Result<ParsedLine<'_>, LineFailure> {
    let parsed = parse_line(line).map_err(|e| {
        LineFailure::new(
            line_no,
            peek_seq(line),
            Code::Parse,
            format!("{} at byte {}", e.reason, e.pos),
        )
    })?;
    let computed = hex_digest(&line_hash(&line[..parsed.hashed_len]));
    if computed != parsed.h.as_bytes() {
        return Err(LineFailure::new(
            line_no,
            Some(parsed.seq),
            Code::Hash,
            "line hash does not match its bytes",
        )
        .values(String::from_utf8_lossy(&computed), parsed.h));
    }
    Ok(parsed)
}

/// Checks that `parsed` is the `log.recovered` record naming the torn line, and
/// otherwise returns the torn line's own failure.
fn check_recovery(
    parsed: &ParsedLine<'_>,
    torn: &Pending,
    line_no: u64,
) -> Result<(), LineFailure> {
    if parsed.event != EVENT_RECOVERED {
        return Err(torn.failure.clone());
    }
    let detail = detail_map(parsed.detail);
    let offset = detail.get("offset").and_then(Value::as_u64);
    let length = detail.get("length").and_then(Value::as_u64);
    let hash = detail.get("hash").and_then(Value::as_str);
    let expected = format!(
        "offset={} length={} hash={}",
        torn.offset, torn.length, torn.sha256
    );
    if detail.len() == 3
        && offset == Some(torn.offset)
        && length == Some(torn.length)
        && hash == Some(torn.sha256.as_str())
    {
        return Ok(());
    }
    let found = format!(
        "offset={} length={} hash={}",
        offset.map_or("?".into(), |v| v.to_string()),
        length.map_or("?".into(), |v| v.to_string()),
        hash.unwrap_or("?")
    );
    Err(LineFailure::new(
        line_no,
        Some(parsed.seq),
        Code::Torn,
        format!(
            "log.recovered record does not name the torn line {} ({})",
            torn.failure.line, torn.failure.reason
        ),
    )
    .values(expected, found))
}

/// Parses a `detail` object that the scanner has already validated.
pub(crate) fn detail_map(detail: &str) -> Map<String, Value> {
    serde_json::from_str(detail).expect("scanner validated the detail object")
}
