//! The audit line format: the record types callers fill in, their serialisation with
//! the top-level fields in fixed order, and the line hash.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use super::{AuditError, EVENT_CHECKPOINT, EVENT_GENESIS, EVENT_RECOVERED, FORMAT, MAX_LINE_LEN};
use crate::model::{KeyId, KeyState};

/// Bytes hashed before a line's bytes, so that an audit line hash can never equal a
/// hash taken for another purpose.
const LINE_HASH_PREFIX: &[u8] = b"keyrot.audit.v1\0";

/// Separator between a line's hashed part and its `h` value.
pub(crate) const H_FIELD: &[u8] = b",\"h\":\"";

/// Result of a logged action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Refused,
    Interrupted,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::Refused,
        Outcome::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// Process and user that wrote a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user: String,
    pub uid: u32,
    pub host: String,
    pub pid: u32,
}

impl Actor {
    /// Describes the running process. A uid without a passwd entry is named by its
    /// number, and an unreadable host name becomes "".
    pub fn current() -> Actor {
        let uid = nix::unistd::getuid();
        let user = match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => user.name,
            _ => uid.as_raw().to_string(),
        };
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Actor {
            user,
            uid: uid.as_raw(),
            host,
            pid: std::process::id(),
        }
    }
}

/// Key version a record is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub version: u32,
    pub id: KeyId,
    pub label: String,
    pub state: KeyState,
}

/// Value in a record's `detail`. Floats and nulls are not part of the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
    UInt(u64),
    Bool(bool),
    List(Vec<Value>),
    Object(Detail),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::UInt(n)
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Value {
        Value::UInt(n.into())
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<Detail> for Value {
    fn from(d: Detail) -> Value {
        Value::Object(d)
    }
}

/// JSON object with unique keys, serialised in insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detail(Vec<(String, Value)>);

impl Detail {
    pub fn new() -> Detail {
        Detail(Vec::new())
    }

    /// Sets `key`, replacing an earlier value of the same key in place.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Builder form of [`Detail::insert`].
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Detail {
        self.insert(key, value);
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// One audit event as a caller supplies it. The writer adds `v`, `seq`, `ts`, `prev`
/// and `h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub run: String,
    /// Key domain, or "" for an event about the log itself.
    pub domain: String,
    /// Dotted lowercase name such as `rotation.started`. Names starting with `log.`
    /// are reserved for records that this module writes itself.
    pub event: String,
    pub actor: Actor,
    pub key: Option<KeyRef>,
    pub outcome: Outcome,
    pub detail: Detail,
}

/// Returns whether `name` is a valid event name: 1 to 64 bytes of `a-z`, `0-9`, `.`, `_`, `-`,
/// starting with a letter or digit.
pub(crate) fn is_valid_event(name: &[u8]) -> bool {
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b);
    !name.is_empty()
        && name.len() <= 64
        && (name[0].is_ascii_lowercase() || name[0].is_ascii_digit())
        && name.iter().all(allowed)
}

/// Returns whether `s` is `len` lowercase hex digits. Folds without short-circuiting so that
/// the compiler can vectorise the loop, because the verifier runs it twice a line.
pub(crate) fn is_lower_hex(s: &[u8], len: usize) -> bool {
    s.len() == len
        && s.iter().fold(true, |ok, &b| {
            ok & (b.is_ascii_digit() | (b'a'..=b'f').contains(&b))
        })
}

/// Encodes a SHA-256 digest as lowercase hex without allocating.
pub(crate) fn hex_digest(digest: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, byte) in digest.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

/// Formats a timestamp as the format requires: UTC, exactly six fractional digits, `Z`.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Computes a line's hash over the line's bytes up to, not including, `,"h":`.
pub fn line_hash(hashed_part: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(LINE_HASH_PREFIX);
    hasher.update(hashed_part);
    hasher.finalize().into()
}

/// Completes a line from its hashed part (everything up to, not including, `,"h":`):
/// appends `,"h":"<hash>"}` and a newline. Returns the line and its hash in hex.
pub fn seal_line(hashed_part: &[u8]) -> (Vec<u8>, String) {
    let hash = hex::encode(line_hash(hashed_part));
    let mut line = Vec::with_capacity(hashed_part.len() + 80);
    line.extend_from_slice(hashed_part);
    line.extend_from_slice(H_FIELD);
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, hash)
}

/// Serialises `rec` as line `seq` chained to `prev`. Returns the line, newline
/// included, and its hash in hex. Reserved `log.*` events are accepted here, so that
/// tools can rebuild any line. The writer rejects them from callers.
pub fn encode_line(
    seq: u64,
    ts: &DateTime<Utc>,
    prev: &str,
    rec: &Record,
) -> Result<(Vec<u8>, String), AuditError> {
    if !is_valid_event(rec.event.as_bytes()) {
        return Err(AuditError::InvalidRecord(format!(
            "event name {:?} must be 1 to 64 characters of a-z, 0-9, '.', '_' or '-'",
            rec.event
        )));
    }
    if !is_lower_hex(prev.as_bytes(), 64) {
        return Err(AuditError::InvalidRecord(format!(
            "prev {prev:?} is not 64 lowercase hex digits"
        )));
    }

    let mut out = Vec::with_capacity(384);
    write!(out, "{{\"v\":1,\"seq\":{seq},\"ts\":\"{}\"", format_ts(ts)).expect("write to Vec");
    write_field_str(&mut out, "run", &rec.run);
    write_field_str(&mut out, "domain", &rec.domain);
    write_field_str(&mut out, "event", &rec.event);

    out.extend_from_slice(b",\"actor\":");
    write_actor(&mut out, &rec.actor);
    out.extend_from_slice(b",\"key\":");
    match &rec.key {
        Some(key) => write_key(&mut out, key),
        None => out.extend_from_slice(b"{}"),
    }
    write_field_str(&mut out, "outcome", rec.outcome.as_str());
    out.extend_from_slice(b",\"detail\":");
    write_object(&mut out, &rec.detail);
    write_field_str(&mut out, "prev", prev);

    let (line, hash) = seal_line(&out);
    if line.len() > MAX_LINE_LEN {
        return Err(AuditError::InvalidRecord(format!(
            "serialised line is {} bytes, over the limit of {MAX_LINE_LEN}",
            line.len()
        )));
    }
    Ok((line, hash))
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("serialising a str to a Vec cannot fail");
}

fn write_field_str(out: &mut Vec<u8>, name: &str, value: &str) {
    write!(out, ",\"{name}\":").expect("write to Vec");
    write_str(out, value);
}

fn write_actor(out: &mut Vec<u8>, actor: &Actor) {
    out.extend_from_slice(b"{\"user\":");
    write_str(out, &actor.user);
    write!(out, ",\"uid\":{},\"host\":", actor.uid).expect("write to Vec");
    write_str(out, &actor.host);
    write!(out, ",\"pid\":{}}}", actor.pid).expect("write to Vec");
}

fn write_key(out: &mut Vec<u8>, key: &KeyRef) {
    write!(
        out,
        "{{\"version\":{},\"id\":\"{}\",\"label\":",
        key.version, key.id
    )
    .expect("write to Vec");
    write_str(out, &key.label);
    write!(out, ",\"state\":\"{}\"}}", key.state).expect("write to Vec");
}

fn write_object(out: &mut Vec<u8>, detail: &Detail) {
    out.push(b'{');
    for (i, (key, value)) in detail.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(s) => write_str(out, s),
        Value::Int(n) => write!(out, "{n}").expect("write to Vec"),
        Value::UInt(n) => write!(out, "{n}").expect("write to Vec"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(detail) => write_object(out, detail),
    }
}

/// Builds the `log.genesis` record: it names the format, the log id and the
/// fingerprint of the checkpoint key.
pub fn genesis_record(log_id: &str, key_fingerprint: &str, actor: Actor) -> Record {
    Record {
        run: String::new(),
        domain: String::new(),
        event: EVENT_GENESIS.to_owned(),
        actor,
        key: None,
        outcome: Outcome::Ok,
        detail: Detail::new()
            .with("format", FORMAT)
            .with("log_id", log_id)
            .with("checkpoint_key", key_fingerprint),
    }
}

/// Builds the `log.checkpoint` record for a signed head.
pub fn checkpoint_record(
    info: &super::CheckpointInfo,
    key_fingerprint: &str,
    run: &str,
    actor: Actor,
) -> Record {
    Record {
        run: run.to_owned(),
        domain: String::new(),
        event: EVENT_CHECKPOINT.to_owned(),
        actor,
        key: None,
        outcome: Outcome::Ok,
        detail: Detail::new()
            .with("seq", info.seq)
            .with("size", info.size)
            .with("head", info.head.as_str())
            .with("ts", info.ts.as_str())
            .with("sig", info.sig.as_str())
            .with("key", key_fingerprint),
    }
}

/// Builds the `log.recovered` record that names a torn line: its byte offset, its
/// length without the newline that recovery added, and the SHA-256 of those bytes.
pub fn recovered_record(offset: u64, length: u64, sha256_hex: &str, actor: Actor) -> Record {
    Record {
        run: String::new(),
        domain: String::new(),
        event: EVENT_RECOVERED.to_owned(),
        actor,
        key: None,
        outcome: Outcome::Ok,
        detail: Detail::new()
            .with("offset", offset)
            .with("length", length)
            .with("hash", sha256_hex),
    }
}
