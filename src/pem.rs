//! PEM export and import of P-256 public keys (SubjectPublicKeyInfo, `-----BEGIN
//! PUBLIC KEY-----`), so that the audit checkpoint key can be verified without the HSM.

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};

/// Encodes a SEC1 P-256 public key (65-byte uncompressed or 33-byte compressed point)
/// as a PEM SubjectPublicKeyInfo with LF line endings.
pub fn public_key_pem(sec1: &[u8]) -> Result<String, String> {
    let key = p256::PublicKey::from_sec1_bytes(sec1).map_err(|_| {
        format!(
            "invalid P-256 public key: {} bytes that are not a SEC1 point on the curve",
            sec1.len()
        )
    })?;
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|error| format!("cannot encode the P-256 public key as PEM: {error}"))
}

/// Parses a PEM SubjectPublicKeyInfo holding a P-256 public key into a key that
/// verifies ECDSA signatures.
pub fn parse_public_key_pem(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem)
        .map_err(|error| format!("invalid P-256 public key PEM: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_point() -> Vec<u8> {
        let secret = p256::SecretKey::from_slice(&[9u8; 32]).unwrap();
        secret.public_key().to_sec1_bytes().to_vec()
    }

    #[test]
    fn pem_round_trip_keeps_key() {
        let point = sample_point();
        let pem = public_key_pem(&point).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let key = parse_public_key_pem(&pem).unwrap();
        assert_eq!(key.to_sec1_bytes().to_vec(), point);
    }

    #[test]
    fn pem_rejects_invalid_input() {
        assert!(public_key_pem(&[0x04; 65]).is_err());
        assert!(
            parse_public_key_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }
}
