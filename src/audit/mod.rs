//! The hash-chained JSONL audit trail: the line format, the only writer of the audit
//! file, checkpoint signing and the streaming verifier behind `audit-verify`.
//!
//! Every line is one JSON object with the top-level fields in a fixed order and `h`
//! last. `h` is the SHA-256 of `"keyrot.audit.v1\0"` followed by the line's raw bytes
//! up to, not including, `,"h":`, so verification needs no JSON canonicalisation.
//! `prev` repeats the previous line's `h`, and line 0 is a `log.genesis` record whose
//! `prev` is 64 zeros. Checkpoints sign the chain head with a P-256 key held in the HSM.
//!
//! This module depends on no other keyrot layer except `model`.

mod chain;
mod checkpoint;
mod error;
#[cfg(feature = "failpoints")]
mod failpoint;
mod format;
mod scan;
mod verify;
mod writer;

pub use checkpoint::{CHECKPOINT_DOMAIN, CheckpointInfo, checkpoint_digest, key_fingerprint};
pub use error::{AuditError, Divergence, ErrorKind};
pub use format::{
    Actor, Detail, KeyRef, Outcome, Record, Value, checkpoint_record, encode_line, format_ts,
    genesis_record, line_hash, recovered_record, seal_line,
};
pub use verify::{Code, Failure, Report, VerifyOptions, read_public_key_pem, verify};
pub use writer::{AuditWriter, CheckpointSigner, TornTail, create_genesis};

use serde::{Deserialize, Serialize};

/// Format name that every line hash is domain-separated with and that the genesis
/// record names.
pub const FORMAT: &str = "keyrot.audit.v1";

/// `prev` of the genesis line.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Maximum line length in bytes, newline included, that the writer produces and the verifier accepts.
/// A longer line is reported as `E_PARSE` so that one corrupt line cannot exhaust memory.
pub const MAX_LINE_LEN: usize = 1 << 20;

/// Reserved event names. Only this module writes them.
pub const EVENT_GENESIS: &str = "log.genesis";
pub const EVENT_CHECKPOINT: &str = "log.checkpoint";
pub const EVENT_RECOVERED: &str = "log.recovered";

/// Last line of the audit file as the ledger records it: the line's sequence number,
/// its `h` in lowercase hex, and the file length in bytes up to and including the
/// line's newline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
    pub len: u64,
}
