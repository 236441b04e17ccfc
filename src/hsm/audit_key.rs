//! The P-256 key pair that signs audit checkpoints. Its private key signs digests
//! inside the token and is not extractable. Its public key is exported, so that the
//! audit trail can be verified without the HSM.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use tracing::{debug, info};

use super::objects::KeyParts;
use super::{HsmError, HsmSession, ObjectKind, call};
use crate::model::{AUDIT_KEY_LABEL, KeyId, KeyType};

/// Length of a SEC1 uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
const SEC1_POINT_BYTES: usize = 65;

/// Shown as the `CKA_ID` in errors about the audit key, which is found by label alone.
pub(super) const ANY_ID: &str = "(any)";

/// Handles and public key of the audit checkpoint key, cached per session.
#[derive(Debug, Clone)]
pub(super) struct AuditKey {
    private: ObjectHandle,
    public_point: Vec<u8>,
}

/// Decodes a `CKA_EC_POINT` value into the SEC1 uncompressed P-256 point.
///
/// PKCS#11 2.40 specifies the value as a DER OCTET STRING wrapping the point, and
/// SoftHSM 2.6.1 returns that. Some tokens return the bare point, which is accepted
/// too. Returns `None` for anything else, including points not on the curve.
pub(super) fn decode_ec_point(value: &[u8]) -> Option<Vec<u8>> {
    let point = match value {
        [0x04, length, point @ ..]
            if usize::from(*length) == SEC1_POINT_BYTES && point.len() == SEC1_POINT_BYTES =>
        {
            point
        }
        _ if value.len() == SEC1_POINT_BYTES => value,
        _ => return None,
    };
    if point[0] != 0x04 {
        return None;
    }
    p256::PublicKey::from_sec1_bytes(point).ok()?;
    Some(point.to_vec())
}

impl HsmSession<'_> {
    /// Finds the audit key by its label (one `C_FindObjects` unless cached).
    fn find_audit_key(&self) -> Result<Option<AuditKey>, HsmError> {
        if let Some(key) = &self.lookups.borrow().audit {
            return Ok(Some(key.clone()));
        }
        let template = [Attribute::Label(AUDIT_KEY_LABEL.as_bytes().to_vec())];
        let handles = call("C_FindObjects", || self.session.find_objects(&template))?;
        if handles.is_empty() {
            return Ok(None);
        }
        let found = self.describe(&handles)?;
        let parts = KeyParts::resolve(&found, KeyType::EcP256, ANY_ID, AUDIT_KEY_LABEL)?;
        let key = self.audit_key_from(&parts)?;
        Ok(Some(key))
    }

    pub(super) fn audit_key_from(&self, parts: &KeyParts) -> Result<AuditKey, HsmError> {
        let private = parts.require(ObjectKind::PrivateKey)?;
        let public = parts.require(ObjectKind::PublicKey)?;
        let public_point = self.ec_point(public, ANY_ID, AUDIT_KEY_LABEL)?;
        let key = AuditKey {
            private,
            public_point,
        };
        self.lookups.borrow_mut().audit = Some(key.clone());
        Ok(key)
    }

    /// Returns the audit checkpoint key's public key as a 65-byte SEC1 uncompressed
    /// point, generating the key pair first if the token has no object labelled
    /// `keyrot/.audit/checkpoint`. The private key is sensitive, non-extractable and
    /// may only sign. Touches the HSM: one `C_FindObjects`, and key generation once.
    ///
    /// A partial pair is reported (`ObjectNotFound`), not replaced, because replacing
    /// the key would invalidate every checkpoint it signed.
    pub fn ensure_audit_key(&self) -> Result<Vec<u8>, HsmError> {
        if let Some(key) = self.find_audit_key()? {
            return Ok(key.public_point);
        }
        let id = KeyId::random();
        self.generate(KeyType::EcP256, &id, AUDIT_KEY_LABEL)?;
        let found = self.lookup(&id, AUDIT_KEY_LABEL)?;
        let parts = KeyParts::resolve(&found, KeyType::EcP256, &id.to_hex(), AUDIT_KEY_LABEL)?;
        let key = self.audit_key_from(&parts)?;
        info!(id = %id, "generated audit checkpoint key");
        Ok(key.public_point)
    }

    /// Returns the audit checkpoint key's public key (65-byte SEC1 uncompressed
    /// point) without creating it. Touches the HSM: one `C_FindObjects` unless cached.
    ///
    /// Errors: `ObjectNotFound` if the token has no audit key.
    pub fn audit_public_key(&self) -> Result<Vec<u8>, HsmError> {
        match self.find_audit_key()? {
            Some(key) => Ok(key.public_point),
            None => Err(audit_key_missing()),
        }
    }

    /// Signs a SHA-256 digest with the audit checkpoint key (`CKM_ECDSA`) and returns
    /// the signature as r‖s, 32 bytes each. Touches the HSM: `C_Sign`, after a
    /// `C_FindObjects` unless cached.
    ///
    /// Errors: `ObjectNotFound` if the token has no audit key.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], HsmError> {
        let key = self.find_audit_key()?.ok_or_else(audit_key_missing)?;
        let signature = match call("C_Sign", || {
            self.session.sign(&Mechanism::Ecdsa, key.private, digest)
        }) {
            Err(error) if error.is_stale_handle() => {
                debug!(%error, "cached audit key handle is stale, searching again");
                self.lookups.borrow_mut().audit = None;
                let key = self.find_audit_key()?.ok_or_else(audit_key_missing)?;
                call("C_Sign", || {
                    self.session.sign(&Mechanism::Ecdsa, key.private, digest)
                })?
            }
            result => result?,
        };
        let length = signature.len();
        signature.try_into().map_err(|_| HsmError::Device {
            function: "C_Sign".to_string(),
            rv: format!("returned a {length}-byte signature, expected 64 bytes"),
        })
    }
}

fn audit_key_missing() -> HsmError {
    HsmError::ObjectNotFound {
        label: AUDIT_KEY_LABEL.to_string(),
        id: ANY_ID.to_string(),
        class: ObjectKind::PrivateKey,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_point() -> Vec<u8> {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        secret.public_key().to_sec1_bytes().to_vec()
    }

    #[test]
    fn decode_ec_point_unwraps_der_octet_string() {
        let point = sample_point();
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(&point);
        assert_eq!(decode_ec_point(&der), Some(point));
    }

    #[test]
    fn decode_ec_point_accepts_bare_point() {
        let point = sample_point();
        assert_eq!(decode_ec_point(&point), Some(point.clone()));
    }

    #[test]
    fn decode_ec_point_rejects_off_curve_and_short() {
        let mut point = sample_point();
        point[64] ^= 0x01;
        assert_eq!(decode_ec_point(&point), None);
        assert_eq!(decode_ec_point(&[0x04, 0x02, 0x04, 0x00]), None);
    }
}
