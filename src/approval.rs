//! Emergency approval documents: their JSON form, the bytes an approver signs, and
//! signing and verifying them with P-256 ECDSA (SHA-256).
//!
//! An approval is a JSON object with these fields, in this order:
//!
//! ```json
//! {"format":"keyrot.approval.v1","domain":"payments","action":"rotate","version":null,
//!  "reason":"key exposed in a log","requester":"oncall1","approver":"sec-lead",
//!  "issued_at":"2026-12-04T10:00:00Z","expires_at":"2026-12-04T14:00:00Z",
//!  "nonce":"<32 hex>","signature":"<128 hex>"}
//! ```
//!
//! `version` and `requester` may be `null`. The signature is not computed over the
//! JSON text, so the document can be re-indented without breaking it. It covers
//! the byte string that [`Approval::signed_bytes`] builds:
//!
//! - the context string `keyrot.approval.v1` and a zero byte;
//! - then each claim as a 4-byte big-endian length followed by its UTF-8 bytes, in the
//!   order domain, action, version, reason, requester, approver, issued_at,
//!   expires_at, nonce.
//!
//! An absent version or requester is the empty string, and a version is written in
//! decimal. Both times are decimal Unix seconds. The signature is ECDSA P-256 over
//! SHA-256 of those bytes, stored as raw `r‖s` (64 bytes, 128 lowercase hex digits).
//!
//! This module only parses, signs and verifies documents. It never reads the ledger
//! or the HSM. Matching a document to a request and burning its nonce are done by
//! the access workflow.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::validate_domain_name;

/// Value of the `format` field, and the context string that starts the signed bytes.
pub const FORMAT: &str = "keyrot.approval.v1";

/// Maximum time from `issued_at` to `expires_at`. An approval is for an emergency
/// at hand; a longer-lived one would act as a standing permission.
pub const MAX_LIFETIME_SECONDS: i64 = 7 * 86_400;

/// Maximum length of `reason` in bytes, because it is copied into the audit trail.
pub const MAX_REASON_BYTES: usize = 1_024;

/// Maximum size of an approval file, far above any valid document.
const MAX_DOCUMENT_BYTES: u64 = 64 * 1_024;

/// Action an approval allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalAction {
    Rotate,
    Revoke,
}

impl ApprovalAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalAction::Rotate => "rotate",
            ApprovalAction::Revoke => "revoke",
        }
    }
}

impl fmt::Display for ApprovalAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims of an approval, everything the signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub domain: String,
    pub action: ApprovalAction,
    /// Key version the action is about: the target of a revoke (required), or the
    /// active version a rotation replaces (optional).
    pub version: Option<u32>,
    pub reason: String,
    /// Account name of the only user who may use the approval; `None` allows any
    /// emergency user other than the approver.
    pub requester: Option<String>,
    /// Name of the approver as listed in `access.approvers`.
    pub approver: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; the approval is invalid from this instant on.
    pub expires_at: i64,
    /// 128 random bits as 32 lowercase hex digits; the ledger burns it on use.
    pub nonce: String,
}

/// An approval and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedApproval {
    pub approval: Approval,
    pub signature: [u8; 64],
}

/// Reason a document is not a valid approval. Messages name the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("invalid approval document: {0}")]
    Invalid(String),
    #[error("approval signature does not verify with the public key of approver {approver:?}")]
    BadSignature { approver: String },
}

/// Failure to use an approver key file. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {} not found", .0.display())]
    Missing(PathBuf),
    #[error(
        "private key file {path} has mode {mode:04o}, readable by group or others\nhint: chmod 600 {path}",
        path = .path.display()
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error("invalid key file {}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("failed to read key file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The JSON form, fields in the documented order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    domain: String,
    action: ApprovalAction,
    #[serde(default)]
    version: Option<u32>,
    reason: String,
    #[serde(default)]
    requester: Option<String>,
    approver: String,
    issued_at: String,
    expires_at: String,
    nonce: String,
    signature: String,
}

impl Approval {
    /// Builds the byte string the signature covers; see the module documentation.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let version = self.version.map(|v| v.to_string()).unwrap_or_default();
        let issued_at = self.issued_at.to_string();
        let expires_at = self.expires_at.to_string();
        let claims: [&str; 9] = [
            &self.domain,
            self.action.as_str(),
            &version,
            &self.reason,
            self.requester.as_deref().unwrap_or(""),
            &self.approver,
            &issued_at,
            &expires_at,
            &self.nonce,
        ];
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(FORMAT.as_bytes());
        bytes.push(0);
        for claim in claims {
            // Every claim is bounded by `check` far below 4 GiB.
            bytes.extend_from_slice(&(claim.len() as u32).to_be_bytes());
            bytes.extend_from_slice(claim.as_bytes());
        }
        bytes
    }

    /// Checks the claims that need no key and no clock: names, sizes, nonce form and
    /// lifetime.
    pub fn check(&self) -> Result<(), ApprovalError> {
        let invalid = |message: String| Err(ApprovalError::Invalid(message));
        if let Err(message) = validate_domain_name(&self.domain) {
            return invalid(format!("domain: {message}"));
        }
        if self.action == ApprovalAction::Revoke && self.version.is_none() {
            return invalid("version: a revoke approval must name the key version".into());
        }
        if self.reason.trim().is_empty() {
            return invalid("reason: must not be empty".into());
        }
        if self.reason.len() > MAX_REASON_BYTES {
            return invalid(format!("reason: longer than {MAX_REASON_BYTES} bytes"));
        }
        if let Some(requester) = &self.requester
            && !is_account_name(requester)
        {
            return invalid(format!("requester: invalid account name {requester:?}"));
        }
        if !is_account_name(&self.approver) {
            return invalid(format!(
                "approver: invalid name {:?} (use 1 to 64 letters, digits, '.', '_' or '-')",
                self.approver
            ));
        }
        if !is_lower_hex(&self.nonce, 32) {
            return invalid("nonce: expected 32 lowercase hex digits".into());
        }
        if self.expires_at <= self.issued_at {
            return invalid("expires_at: not after issued_at".into());
        }
        if self.expires_at - self.issued_at > MAX_LIFETIME_SECONDS {
            return invalid(format!(
                "expires_at: more than {} days after issued_at",
                MAX_LIFETIME_SECONDS / 86_400
            ));
        }
        Ok(())
    }

    /// Checks the claims and signs them.
    pub fn sign(self, key: &SigningKey) -> Result<SignedApproval, ApprovalError> {
        self.check()?;
        let signature: Signature = key.sign(&self.signed_bytes());
        Ok(SignedApproval {
            approval: self,
            signature: signature.to_bytes().into(),
        })
    }
}

impl SignedApproval {
    /// Parses a document strictly: unknown or duplicate fields, a wrong format, times
    /// that are not whole-second RFC 3339 and malformed hex are all rejected.
    pub fn parse(text: &str) -> Result<SignedApproval, ApprovalError> {
        let document: Document = serde_json::from_str(text)
            .map_err(|e| ApprovalError::Invalid(format!("not an approval document: {e}")))?;
        if document.format != FORMAT {
            return Err(ApprovalError::Invalid(format!(
                "format: expected {FORMAT:?}, found {:?}",
                document.format
            )));
        }
        if !is_lower_hex(&document.signature, 128) {
            return Err(ApprovalError::Invalid(
                "signature: expected 128 lowercase hex digits".into(),
            ));
        }
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&document.signature, &mut signature)
            .map_err(|e| ApprovalError::Invalid(format!("signature: {e}")))?;
        let approval = Approval {
            domain: document.domain,
            action: document.action,
            version: document.version,
            reason: document.reason,
            requester: document.requester,
            approver: document.approver,
            issued_at: parse_time("issued_at", &document.issued_at)?,
            expires_at: parse_time("expires_at", &document.expires_at)?,
            nonce: document.nonce,
        };
        approval.check()?;
        Ok(SignedApproval {
            approval,
            signature,
        })
    }

    /// Reads and parses an approval file of at most 64 KiB.
    pub fn read(path: &Path) -> Result<SignedApproval, ReadError> {
        let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut text = String::new();
        file.take(MAX_DOCUMENT_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| ReadError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if text.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(ReadError::Approval(ApprovalError::Invalid(format!(
                "larger than {MAX_DOCUMENT_BYTES} bytes"
            ))));
        }
        SignedApproval::parse(&text).map_err(ReadError::Approval)
    }

    /// Verifies the signature over the claims with an approver's public key.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), ApprovalError> {
        let bad = || ApprovalError::BadSignature {
            approver: self.approval.approver.clone(),
        };
        let signature = Signature::from_slice(&self.signature).map_err(|_| bad())?;
        key.verify(&self.approval.signed_bytes(), &signature)
            .map_err(|_| bad())
    }

    /// Renders the document as pretty-printed JSON with a final newline.
    pub fn to_json(&self) -> String {
        let a = &self.approval;
        let document = Document {
            format: FORMAT.to_string(),
            domain: a.domain.clone(),
            action: a.action,
            version: a.version,
            reason: a.reason.clone(),
            requester: a.requester.clone(),
            approver: a.approver.clone(),
            issued_at: format_time(a.issued_at),
            expires_at: format_time(a.expires_at),
            nonce: a.nonce.clone(),
            signature: hex::encode(self.signature),
        };
        let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Failure to read or parse an approval file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("failed to read approval file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Approval(ApprovalError),
}

/// Generates a fresh nonce: 128 bits from the operating system's generator.
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Formats Unix seconds as RFC 3339 UTC, such as `2026-12-04T10:00:00Z`.
pub fn format_time(seconds: i64) -> String {
    DateTime::<Utc>::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(field: &str, text: &str) -> Result<i64, ApprovalError> {
    let time = DateTime::parse_from_rfc3339(text).map_err(|e| {
        ApprovalError::Invalid(format!("{field}: invalid RFC 3339 time {text:?}: {e}"))
    })?;
    if time.timestamp_subsec_nanos() != 0 {
        return Err(ApprovalError::Invalid(format!(
            "{field}: {text:?} has a fraction of a second; whole seconds are signed"
        )));
    }
    Ok(time.timestamp())
}

/// Reads an approver's private key (PKCS#8 or SEC1 PEM) after checking that the file
/// is readable by its owner only. A leading `EC PARAMETERS` block, as written by
/// `openssl ecparam -genkey`, is skipped.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let meta = std::fs::metadata(path).map_err(|source| key_io_error(path, source))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Insecure {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|source| key_io_error(path, source))?);
    let invalid = |message: &str| KeyFileError::Invalid {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let start = [
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN EC PRIVATE KEY-----",
    ]
    .iter()
    .filter_map(|marker| text.find(marker))
    .min()
    .ok_or_else(|| invalid("no PRIVATE KEY or EC PRIVATE KEY PEM block"))?;
    // The decoder's own error text could quote the input, so only its kind is kept.
    let secret = p256::SecretKey::from_pem(&text[start..])
        .map_err(|_| invalid("the PEM block is not a P-256 private key"))?;
    Ok(SigningKey::from(&secret))
}

/// Reads an approver's public key (PEM SubjectPublicKeyInfo).
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| key_io_error(path, source))?;
    crate::pem::parse_public_key_pem(&text).map_err(|message| KeyFileError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

fn key_io_error(path: &Path, source: std::io::Error) -> KeyFileError {
    if source.kind() == std::io::ErrorKind::NotFound {
        KeyFileError::Missing(path.to_path_buf())
    } else {
        KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Checks that `name` can be an account or approver name: 1 to 64 ASCII letters, digits,
/// `.`, `_` or `-`.
pub fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn sample() -> Approval {
        Approval {
            domain: "payments".into(),
            action: ApprovalAction::Rotate,
            version: None,
            reason: "key exposed in a log".into(),
            requester: Some("oncall1".into()),
            approver: "sec-lead".into(),
            issued_at: 1_800_000_000,
            expires_at: 1_800_003_600,
            nonce: "00112233445566778899aabbccddeeff".into(),
        }
    }

    #[test]
    fn signed_document_round_trips() {
        let signed = sample().sign(&key(7)).unwrap();
        let parsed = SignedApproval::parse(&signed.to_json()).unwrap();
        assert_eq!(parsed, signed);
        parsed.verify(key(7).verifying_key()).unwrap();
    }

    #[test]
    fn signed_bytes_are_length_prefixed() {
        let bytes = sample().signed_bytes();
        assert!(bytes.starts_with(b"keyrot.approval.v1\0\0\0\0\x08payments\0\0\0\x06rotate"));
        assert!(bytes.ends_with(b"\0\0\0\x2000112233445566778899aabbccddeeff"));
    }

    #[test]
    fn moving_bytes_between_claims_changes_signed_bytes() {
        let mut a = sample();
        a.reason = "ab".into();
        a.requester = Some("c".into());
        let mut b = sample();
        b.reason = "a".into();
        b.requester = Some("bc".into());
        assert_ne!(a.signed_bytes(), b.signed_bytes());
    }

    #[test]
    fn other_key_fails_verification() {
        let signed = sample().sign(&key(7)).unwrap();
        let error = signed.verify(key(8).verifying_key()).unwrap_err();
        assert!(matches!(error, ApprovalError::BadSignature { .. }));
    }

    #[test]
    fn every_changed_claim_breaks_the_signature() {
        let mut claims = sample();
        claims.version = Some(3);
        let signed = claims.sign(&key(7)).unwrap();
        let json = signed.to_json();
        let expiry = format_time(sample().expires_at);
        let later = format_time(sample().expires_at + 60);
        let edits = [
            ("\"payments\"", "\"payroll\""),
            ("\"rotate\"", "\"revoke\""),
            ("\"version\": 3", "\"version\": 4"),
            ("key exposed", "key exposes"),
            ("\"oncall1\"", "\"oncall2\""),
            ("\"sec-lead\"", "\"sec-lea\""),
            (expiry.as_str(), later.as_str()),
            ("00112233", "00112234"),
        ];
        for (from, to) in edits {
            assert!(json.contains(from), "{from} not in {json}");
            let edited = json.replacen(from, to, 1);
            match SignedApproval::parse(&edited) {
                Ok(parsed) => assert!(
                    parsed.verify(key(7).verifying_key()).is_err(),
                    "edit {from} -> {to} still verifies"
                ),
                Err(error) => panic!("edit {from} -> {to} did not parse: {error}"),
            }
        }
    }

    #[test]
    fn strict_parser_rejects_malformed_documents() {
        let json = sample().sign(&key(7)).unwrap().to_json();
        let expiry = format_time(sample().expires_at);
        let fractional = expiry.replace('Z', ".5Z");
        let before_issue = format_time(sample().issued_at - 60);
        let too_late = format_time(sample().issued_at + MAX_LIFETIME_SECONDS + 1);
        let cases = [
            ("unknown field", json.replacen('{', "{\"extra\": 1,", 1)),
            (
                "duplicate field",
                json.replacen('{', "{\"domain\": \"payments\",", 1),
            ),
            ("wrong format", json.replace(FORMAT, "keyrot.approval.v2")),
            ("fractional time", json.replace(&expiry, &fractional)),
            (
                "short nonce",
                json.replace("00112233445566778899aabbccddeeff", "0011"),
            ),
            (
                "uppercase nonce",
                json.replace("aabbccddeeff", "AABBCCDDEEFF"),
            ),
            ("unknown action", json.replace("\"rotate\"", "\"destroy\"")),
            ("bad domain", json.replace("\"payments\"", "\"../etc\"")),
            ("empty reason", json.replace("key exposed in a log", " ")),
            ("expiry before issue", json.replace(&expiry, &before_issue)),
            ("lifetime over 7 days", json.replace(&expiry, &too_late)),
            ("not json", "approve".to_string()),
        ];
        for (name, text) in cases {
            assert!(SignedApproval::parse(&text).is_err(), "{name} parsed");
        }
    }

    #[test]
    fn revoke_needs_a_version() {
        let mut approval = sample();
        approval.action = ApprovalAction::Revoke;
        assert!(approval.clone().sign(&key(7)).is_err());
        approval.version = Some(2);
        assert!(approval.sign(&key(7)).is_ok());
    }
}
