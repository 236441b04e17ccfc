//! Checkpoint signatures: the signed message, the record the ledger keeps, and the
//! fingerprint that names the checkpoint key.

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes that open every signed checkpoint message.
pub const CHECKPOINT_DOMAIN: &[u8] = b"keyrot.checkpoint.v1\0";

/// A signed chain head, as the `log.checkpoint` line and the ledger record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Sequence number of the last line covered by the signature.
    pub seq: u64,
    /// File length in bytes up to and including that line's newline.
    pub size: u64,
    /// That line's `h` in lowercase hex.
    pub head: String,
    /// Signing time, formatted like a line's `ts`.
    pub ts: String,
    /// ECDSA P-256 signature as raw r‖s, 64 bytes in lowercase hex.
    pub sig: String,
    /// Sequence number of the `log.checkpoint` line itself.
    pub line_seq: u64,
}

/// Computes the 32-byte digest that a checkpoint signature covers:
///
/// `SHA-256("keyrot.checkpoint.v1\0" || seq as u64 big-endian || head as 32 raw bytes
/// || size as u64 big-endian || ts as its ASCII bytes)`
///
/// The signer runs `CKM_ECDSA` over this digest, and the verifier checks the signature
/// against the same digest. Returns `None` when `head` is not 64 hex digits.
pub fn checkpoint_digest(seq: u64, head: &str, size: u64, ts: &str) -> Option<[u8; 32]> {
    let mut head_bytes = [0u8; 32];
    hex::decode_to_slice(head, &mut head_bytes).ok()?;
    let mut hasher = Sha256::new();
    hasher.update(CHECKPOINT_DOMAIN);
    hasher.update(seq.to_be_bytes());
    hasher.update(head_bytes);
    hasher.update(size.to_be_bytes());
    hasher.update(ts.as_bytes());
    Some(hasher.finalize().into())
}

/// Computes the fingerprint of a checkpoint key: lowercase hex SHA-256 of the
/// uncompressed SEC1 encoding (`04 || x || y`, 65 bytes) of the public key.
pub fn key_fingerprint(key: &VerifyingKey) -> String {
    let point = key.to_sec1_point(false);
    hex::encode(Sha256::digest(point.as_bytes()))
}

/// Checks a raw r‖s signature in hex over `digest`.
pub(crate) fn verify_signature(
    key: &VerifyingKey,
    digest: &[u8; 32],
    sig_hex: &str,
) -> Result<(), String> {
    let mut raw = [0u8; 64];
    hex::decode_to_slice(sig_hex, &mut raw)
        .map_err(|e| format!("signature is not 64 bytes of hex: {e}"))?;
    let sig = Signature::from_slice(&raw).map_err(|e| format!("invalid signature: {e}"))?;
    key.verify_prehash(digest, &sig)
        .map_err(|_| "signature does not verify with the given public key".to_owned())
}
