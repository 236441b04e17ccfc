//! Operations on one key version (generate, self-test, usage, check value, destroy)
//! and the inventory of every keyrot object on the token.

use std::collections::HashMap;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::audit_key::{ANY_ID, decode_ec_point};
use super::error::rv_name;
use super::objects::{Found, INVENTORY_ATTRIBUTES, KeyParts};
use super::{HsmError, HsmSession, Lookups, ObjectInfo, ObjectKind, UsageFlags, call, templates};
use crate::model::{AUDIT_KEY_LABEL, KeyId, KeyType, LABEL_PREFIX, Usage};

/// Result of [`HsmSession::generate`]: how the key version came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateOutcome {
    /// No object existed; the key was generated.
    Created,
    /// Every object of the key version already existed (left by an earlier run that
    /// stopped before recording its result) and was kept as it is.
    Adopted,
    /// Part of a key pair existed; those objects were destroyed and the pair generated.
    ReplacedPartial { destroyed: usize },
}

/// Additional authenticated data of the AES-GCM self-test.
const SELF_TEST_AAD: &[u8] = b"keyrot self-test";

/// AES-GCM tag length of the self-test, in bits.
const GCM_TAG_BITS: u64 = 128;

/// Return values that mean the key, not the token, failed the self-test.
const SELF_TEST_FAILURES: [RvError; 8] = [
    RvError::KeyFunctionNotPermitted,
    RvError::KeyTypeInconsistent,
    RvError::KeySizeRange,
    RvError::MechanismInvalid,
    RvError::SignatureInvalid,
    RvError::SignatureLenRange,
    RvError::EncryptedDataInvalid,
    RvError::EncryptedDataLenRange,
];

/// Turns a PKCS#11 failure that blames the key into `SelfTestFailed`.
fn self_test_failure(label: &str, error: HsmError) -> HsmError {
    match &error {
        HsmError::Device { function, rv }
            if SELF_TEST_FAILURES
                .iter()
                .any(|known| rv_name(*known) == *rv) =>
        {
            HsmError::SelfTestFailed {
                label: label.to_string(),
                reason: format!("{function} returned {rv}"),
            }
        }
        _ => error,
    }
}

fn self_test_failed(label: &str, reason: &str) -> HsmError {
    HsmError::SelfTestFailed {
        label: label.to_string(),
        reason: reason.to_string(),
    }
}

impl HsmSession<'_> {
    /// Generates a key version: an AES-256 secret key, or an EC P-256 or RSA-3072 key
    /// pair whose private and public objects share `id` and `label`. The attributes are
    /// those of `templates`, with usage at `Usage::Full`.
    ///
    /// Idempotent: if every object of the version already exists, it is adopted
    /// unchanged. If only part of a pair exists, that part is destroyed and the pair
    /// generated again. Touches the HSM: at most one `C_FindObjects`, then
    /// `C_DestroyObject` for leftovers, `C_GenerateKey` or `C_GenerateKeyPair`, and a
    /// read-back that checks the token applied the protection attributes.
    ///
    /// Errors: `DuplicateObjects` or `UnexpectedObject` if the objects already under
    /// `id` and `label` are not a (possibly partial) keyrot key of `key_type`.
    pub fn generate(
        &self,
        key_type: KeyType,
        id: &KeyId,
        label: &str,
    ) -> Result<GenerateOutcome, HsmError> {
        let id_hex = id.to_hex();
        let destroyed = self.with_key(id, label, |found| {
            let parts = KeyParts::resolve(found, key_type, &id_hex, label)?;
            if parts.is_complete(key_type) {
                return Ok(None);
            }
            let leftovers = parts.present();
            for handle in &leftovers {
                call("C_DestroyObject", || self.session.destroy_object(*handle))?;
            }
            Ok(Some(leftovers.len()))
        })?;
        let Some(destroyed) = destroyed else {
            info!(label, id = %id_hex, %key_type, "adopted existing key objects");
            return Ok(GenerateOutcome::Adopted);
        };
        if destroyed > 0 {
            warn!(label, id = %id_hex, destroyed, "destroyed a partial key pair before generating it again");
        }

        let handles = self.generate_objects(key_type, id, label)?;
        let created = self.describe(&handles)?;
        KeyParts::resolve(&created, key_type, &id_hex, label)?.require_all(key_type)?;
        self.remember(id, label, created);
        info!(label, id = %id_hex, %key_type, "generated key");
        Ok(if destroyed == 0 {
            GenerateOutcome::Created
        } else {
            GenerateOutcome::ReplacedPartial { destroyed }
        })
    }

    fn generate_objects(
        &self,
        key_type: KeyType,
        id: &KeyId,
        label: &str,
    ) -> Result<Vec<ObjectHandle>, HsmError> {
        let pair_mechanism = match key_type {
            KeyType::Aes256 => {
                let template = templates::secret_key(id, label);
                let handle = call("C_GenerateKey", || {
                    self.session.generate_key(&Mechanism::AesKeyGen, &template)
                })?;
                return Ok(vec![handle]);
            }
            KeyType::EcP256 => Mechanism::EccKeyPairGen,
            KeyType::Rsa3072 => Mechanism::RsaPkcsKeyPairGen,
        };
        let public_template = templates::public_key(key_type, id, label);
        let private_template = templates::private_key(id, label);
        let (public, private) = call("C_GenerateKeyPair", || {
            self.session
                .generate_key_pair(&pair_mechanism, &public_template, &private_template)
        })?;
        Ok(vec![private, public])
    }

    /// Counts the objects with this `CKA_ID` and label, of any class. Always searches
    /// the token (one `C_FindObjects`) and refreshes the cached lookup.
    pub fn count(&self, id: &KeyId, label: &str) -> Result<usize, HsmError> {
        let found = self.find_key(id, label)?;
        let count = found.len();
        self.remember(id, label, found);
        Ok(count)
    }

    /// Runs a round trip with the key version. AES keys encrypt and decrypt random
    /// data with AES-256-GCM. Pairs sign the SHA-256 digest of random data
    /// (`CKM_ECDSA`, or `CKM_SHA256_RSA_PKCS` for RSA), and the signature must verify
    /// for that data and fail for altered data. Touches the HSM but changes nothing
    /// on it.
    ///
    /// The key must be at `Usage::Full`; a restricted key fails with `SelfTestFailed`
    /// naming `CKR_KEY_FUNCTION_NOT_PERMITTED`.
    pub fn self_test(&self, key_type: KeyType, id: &KeyId, label: &str) -> Result<(), HsmError> {
        let id_hex = id.to_hex();
        self.with_key(id, label, |found| {
            let parts = KeyParts::resolve(found, key_type, &id_hex, label)?;
            let result = match key_type {
                KeyType::Aes256 => {
                    self.aes_round_trip(parts.require(ObjectKind::SecretKey)?, label)
                }
                KeyType::EcP256 | KeyType::Rsa3072 => self.signature_round_trip(
                    key_type,
                    parts.require(ObjectKind::PrivateKey)?,
                    parts.require(ObjectKind::PublicKey)?,
                    label,
                ),
            };
            result.map_err(|error| self_test_failure(label, error))
        })?;
        debug!(label, id = %id_hex, %key_type, "key passed self-test");
        Ok(())
    }

    fn aes_round_trip(&self, key: ObjectHandle, label: &str) -> Result<(), HsmError> {
        let plaintext: [u8; 32] = rand::random();
        let iv: [u8; 12] = rand::random();

        let mut encrypt_iv = iv;
        let params = GcmParams::new(&mut encrypt_iv, SELF_TEST_AAD, GCM_TAG_BITS.into())
            .map_err(|error| HsmError::device("C_EncryptInit", error))?;
        let mechanism = Mechanism::AesGcm(params);
        let ciphertext = call("C_Encrypt", || {
            self.session.encrypt(&mechanism, key, &plaintext)
        })?;
        if ciphertext.len() != plaintext.len() + 16 || ciphertext[..plaintext.len()] == plaintext {
            return Err(self_test_failed(
                label,
                "C_Encrypt did not return AES-GCM ciphertext",
            ));
        }

        let mut decrypt_iv = iv;
        let params = GcmParams::new(&mut decrypt_iv, SELF_TEST_AAD, GCM_TAG_BITS.into())
            .map_err(|error| HsmError::device("C_DecryptInit", error))?;
        let mechanism = Mechanism::AesGcm(params);
        let decrypted = call("C_Decrypt", || {
            self.session.decrypt(&mechanism, key, &ciphertext)
        })?;
        if decrypted != plaintext {
            return Err(self_test_failed(
                label,
                "decrypted data differs from the plaintext",
            ));
        }
        Ok(())
    }

    fn signature_round_trip(
        &self,
        key_type: KeyType,
        private: ObjectHandle,
        public: ObjectHandle,
        label: &str,
    ) -> Result<(), HsmError> {
        let data: [u8; 32] = rand::random();
        // CKM_ECDSA signs a digest computed outside the token; CKM_SHA256_RSA_PKCS
        // hashes the data itself.
        let (mechanism, signed): (Mechanism, Vec<u8>) = match key_type {
            KeyType::EcP256 => (Mechanism::Ecdsa, Sha256::digest(data).to_vec()),
            _ => (Mechanism::Sha256RsaPkcs, data.to_vec()),
        };
        let signature = call("C_Sign", || self.session.sign(&mechanism, private, &signed))?;
        call("C_Verify", || {
            self.session.verify(&mechanism, public, &signed, &signature)
        })?;

        let mut altered = signed.clone();
        altered[0] ^= 0x01;
        match call("C_Verify", || {
            self.session
                .verify(&mechanism, public, &altered, &signature)
        }) {
            Err(HsmError::Device { rv, .. }) if rv == rv_name(RvError::SignatureInvalid) => Ok(()),
            Ok(()) => Err(self_test_failed(
                label,
                "C_Verify accepted the signature for different data",
            )),
            Err(error) => Err(error),
        }
    }

    /// Sets the usage attributes of every object of the key version to those of
    /// `usage` (see [`UsageFlags::expected`]). Idempotent. Touches the HSM: one
    /// `C_SetAttributeValue` per object, after a `C_FindObjects` unless cached.
    pub fn apply_usage(
        &self,
        key_type: KeyType,
        id: &KeyId,
        label: &str,
        usage: Usage,
    ) -> Result<(), HsmError> {
        let id_hex = id.to_hex();
        self.with_key(id, label, |found| {
            let parts = KeyParts::resolve(found, key_type, &id_hex, label)?;
            for (kind, handle) in parts.require_all(key_type)? {
                let template = UsageFlags::expected(kind, usage).to_template(kind);
                call("C_SetAttributeValue", || {
                    self.session.update_attributes(handle, &template)
                })?;
            }
            Ok(())
        })?;
        debug!(label, id = %id_hex, ?usage, "applied key usage");
        Ok(())
    }

    /// Destroys every object of the key version. Idempotent: a version with no
    /// objects is `Ok`. Touches the HSM: `C_DestroyObject` per object, after a
    /// `C_FindObjects` unless cached.
    ///
    /// Errors: `DuplicateObjects` if two objects of one class share the `id` and
    /// `label`; nothing is destroyed then.
    pub fn destroy(&self, id: &KeyId, label: &str) -> Result<(), HsmError> {
        let id_hex = id.to_hex();
        let destroyed = self.with_key(id, label, |found| {
            let mut per_class: HashMap<ObjectKind, usize> = HashMap::new();
            for object in found {
                *per_class.entry(object.kind).or_default() += 1;
            }
            if let Some((class, count)) = per_class.into_iter().find(|(_, count)| *count > 1) {
                return Err(HsmError::DuplicateObjects {
                    label: label.to_string(),
                    id: id_hex.clone(),
                    class,
                    count,
                });
            }
            for object in found {
                call("C_DestroyObject", || {
                    self.session.destroy_object(object.handle)
                })?;
            }
            Ok(found.len())
        })?;
        self.remember(id, label, Vec::new());
        info!(label, id = %id_hex, destroyed, "destroyed key objects");
        Ok(())
    }

    /// Computes the key check value (6 hex digits) that identifies a key version after
    /// it is destroyed. AES: the first 3 bytes of the encryption of a zero block, read
    /// from `CKA_CHECK_VALUE` where the token provides it. Pairs: the first 3 bytes of
    /// the SHA-256 digest of the public value, the 65-byte SEC1 uncompressed point for
    /// EC and the big-endian `CKA_MODULUS` for RSA. Touches the HSM but changes nothing.
    ///
    /// NOTE: for an AES key without `CKA_CHECK_VALUE`, the value comes from
    /// `CKM_AES_ECB` encryption, which needs `CKA_ENCRYPT`; compute it before the key
    /// is deprecated.
    pub fn check_value(
        &self,
        key_type: KeyType,
        id: &KeyId,
        label: &str,
    ) -> Result<String, HsmError> {
        let id_hex = id.to_hex();
        self.with_key(id, label, |found| {
            let parts = KeyParts::resolve(found, key_type, &id_hex, label)?;
            let bytes = match key_type {
                KeyType::Aes256 => self.aes_check_value(parts.require(ObjectKind::SecretKey)?)?,
                KeyType::EcP256 => {
                    let point =
                        self.ec_point(parts.require(ObjectKind::PublicKey)?, &id_hex, label)?;
                    Sha256::digest(point).to_vec()
                }
                KeyType::Rsa3072 => {
                    let modulus =
                        self.rsa_modulus(parts.require(ObjectKind::PublicKey)?, &id_hex, label)?;
                    Sha256::digest(modulus).to_vec()
                }
            };
            Ok(hex::encode(&bytes[..3]))
        })
    }

    fn aes_check_value(&self, key: ObjectHandle) -> Result<Vec<u8>, HsmError> {
        let attributes = call("C_GetAttributeValue", || {
            self.session
                .get_attributes(key, &[AttributeType::CheckValue])
        })?;
        if let Some(Attribute::CheckValue(value)) = attributes.first()
            && value.len() >= 3
        {
            return Ok(value.clone());
        }
        call("C_Encrypt", || {
            self.session.encrypt(&Mechanism::AesEcb, key, &[0u8; 16])
        })
    }

    fn rsa_modulus(
        &self,
        public: ObjectHandle,
        id: &str,
        label: &str,
    ) -> Result<Vec<u8>, HsmError> {
        let attributes = call("C_GetAttributeValue", || {
            self.session
                .get_attributes(public, &[AttributeType::Modulus])
        })?;
        match attributes.first() {
            Some(Attribute::Modulus(modulus)) if !modulus.is_empty() => Ok(modulus.clone()),
            _ => Err(HsmError::UnexpectedObject {
                label: label.to_string(),
                id: id.to_string(),
                class: ObjectKind::PublicKey,
                reason: "CKA_MODULUS is missing".to_string(),
            }),
        }
    }

    /// Reads the SEC1 uncompressed point (65 bytes) of an EC P-256 public key.
    pub(super) fn ec_point(
        &self,
        public: ObjectHandle,
        id: &str,
        label: &str,
    ) -> Result<Vec<u8>, HsmError> {
        let attributes = call("C_GetAttributeValue", || {
            self.session
                .get_attributes(public, &[AttributeType::EcPoint])
        })?;
        let point = match attributes.first() {
            Some(Attribute::EcPoint(value)) => decode_ec_point(value),
            _ => None,
        };
        point.ok_or_else(|| HsmError::UnexpectedObject {
            label: label.to_string(),
            id: id.to_string(),
            class: ObjectKind::PublicKey,
            reason: "CKA_EC_POINT is missing or not an uncompressed P-256 point".to_string(),
        })
    }

    /// Lists every object whose label starts with `keyrot/`, with its class, key type,
    /// usage flags and protection attributes. Touches the HSM: one `C_FindObjects` over
    /// the whole token and one attribute read per object (cryptoki makes that two
    /// `C_GetAttributeValue` calls, since labels and ids vary in length).
    ///
    /// Replaces this session's cached lookups with what it found, so that later
    /// operations on any key version need no further search.
    pub fn inventory(&self) -> Result<Vec<ObjectInfo>, HsmError> {
        self.inventory_under(LABEL_PREFIX)
    }

    /// Lists the objects whose label starts with `prefix`, such as `keyrot/payments/`,
    /// like [`HsmSession::inventory`]. Reads only the label of other objects, so a key
    /// that another process is creating in another domain cannot disturb the listing.
    ///
    /// Replaces the cached lookups under `prefix` and keeps the others. The audit
    /// checkpoint key is cached too when the listing passes it, so that signing a
    /// checkpoint later needs no search of its own.
    pub fn inventory_under(&self, prefix: &str) -> Result<Vec<ObjectInfo>, HsmError> {
        let handles = call("C_FindObjects", || self.session.find_objects(&[]))?;
        let mut listing = Listing::default();
        let mut audit_objects = Vec::new();
        for handle in handles {
            let label = call("C_GetAttributeValue", || {
                self.session.get_attributes(handle, &[AttributeType::Label])
            });
            let label = match label {
                Ok(attributes) => label_of(&attributes),
                Err(error) if error.is_stale_handle() => {
                    debug!(%error, "object destroyed during inventory, skipping it");
                    continue;
                }
                Err(error) => return Err(error),
            };
            let is_audit_key = label == AUDIT_KEY_LABEL;
            if !label.starts_with(prefix) {
                if is_audit_key {
                    audit_objects.extend(self.describe(&[handle])?);
                }
                continue;
            }
            let Some(attributes) = self.read_inventory_attributes(handle)? else {
                continue;
            };
            if is_audit_key {
                audit_objects.push(Found::from_attributes(handle, &attributes));
            }
            listing.add(handle, &attributes);
        }
        self.cache_audit_key(&audit_objects);
        let objects = self.store_listing(prefix, listing, true);
        debug!(objects = objects.len(), "listed keyrot objects");
        Ok(objects)
    }

    /// Lists the objects under `prefix` like [`HsmSession::inventory_under`], but
    /// searches the token only if no earlier listing of this session covers `prefix`.
    /// Otherwise it reads the attributes of the objects that listing found, and of
    /// those this session generated since, with one attribute read per object.
    ///
    /// NOTE: an object that another process creates under `prefix` after the earlier
    /// listing is not seen. keyrot itself creates objects only under the domain lock,
    /// so callers that hold the lock since that listing see every keyrot object.
    pub fn relist_under(&self, prefix: &str) -> Result<Vec<ObjectInfo>, HsmError> {
        let handles = {
            let lookups = self.lookups.borrow();
            let covered = lookups
                .complete
                .as_deref()
                .is_some_and(|complete| prefix.starts_with(complete));
            covered.then(|| cached_handles(&lookups, prefix))
        };
        let Some(handles) = handles else {
            return self.inventory_under(prefix);
        };
        let mut listing = Listing::default();
        for handle in handles {
            // A destroyed object is left out, as a new search would leave it out.
            let Some(attributes) = self.read_inventory_attributes(handle)? else {
                continue;
            };
            if label_of(&attributes).starts_with(prefix) {
                listing.add(handle, &attributes);
            }
        }
        let objects = self.store_listing(prefix, listing, false);
        debug!(objects = objects.len(), "read keyrot objects again");
        Ok(objects)
    }

    /// Replaces the cached lookups under `prefix` with `listing` and returns its
    /// objects. `searched` marks a listing from a search of the whole token, which
    /// makes the cache complete under `prefix`.
    fn store_listing(&self, prefix: &str, listing: Listing, searched: bool) -> Vec<ObjectInfo> {
        let mut lookups = self.lookups.borrow_mut();
        lookups
            .keys
            .retain(|(_, label), _| !label.starts_with(prefix));
        lookups.keys.extend(listing.keys);
        lookups
            .others
            .retain(|(label, _)| !label.starts_with(prefix));
        lookups.others.extend(listing.others);
        let covered = lookups
            .complete
            .as_deref()
            .is_some_and(|complete| prefix.starts_with(complete));
        if searched && !covered {
            lookups.complete = Some(prefix.to_string());
        }
        listing.objects
    }

    /// Caches the audit checkpoint key from objects a listing found, unless it is
    /// cached already. Objects that are not a complete key pair are left for
    /// [`HsmSession::audit_public_key`] to report.
    fn cache_audit_key(&self, found: &[Found]) {
        if found.is_empty() || self.lookups.borrow().audit.is_some() {
            return;
        }
        let cached = KeyParts::resolve(found, KeyType::EcP256, ANY_ID, AUDIT_KEY_LABEL)
            .and_then(|parts| self.audit_key_from(&parts));
        if let Err(error) = cached {
            debug!(%error, "audit key found by the listing is left for a lookup");
        }
    }

    /// Reads an object's inventory attributes; `None` when the object was destroyed
    /// meanwhile.
    ///
    /// NOTE: SoftHSM 2.6.1 (file object store) can return attribute values that fail
    /// to decode while another process is still writing a new object, so a failed
    /// read is retried a few times before it counts as an error.
    fn read_inventory_attributes(
        &self,
        handle: ObjectHandle,
    ) -> Result<Option<Vec<Attribute>>, HsmError> {
        let mut attempt = 0;
        loop {
            let read = call("C_GetAttributeValue", || {
                self.session.get_attributes(handle, &INVENTORY_ATTRIBUTES)
            });
            match read {
                Ok(attributes) => return Ok(Some(attributes)),
                Err(error) if error.is_stale_handle() => {
                    debug!(%error, "object destroyed during inventory, skipping it");
                    return Ok(None);
                }
                Err(error) if attempt < 5 => {
                    debug!(%error, attempt, "attribute read failed, retrying");
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// Objects of one listing, and the cache entries they make.
#[derive(Default)]
struct Listing {
    objects: Vec<ObjectInfo>,
    keys: HashMap<(KeyId, String), Vec<Found>>,
    others: Vec<(String, ObjectHandle)>,
}

impl Listing {
    fn add(&mut self, handle: ObjectHandle, attributes: &[Attribute]) {
        let info = ObjectInfo::from_attributes(attributes);
        match info.key_id() {
            Some(id) => self
                .keys
                .entry((id, info.label.clone()))
                .or_default()
                .push(Found::from_attributes(handle, attributes)),
            None => self.others.push((info.label.clone(), handle)),
        }
        self.objects.push(info);
    }
}

/// Handles of every cached object under `prefix`.
fn cached_handles(lookups: &Lookups, prefix: &str) -> Vec<ObjectHandle> {
    let keyed = lookups
        .keys
        .iter()
        .filter(|((_, label), _)| label.starts_with(prefix))
        .flat_map(|(_, found)| found.iter().map(|object| object.handle));
    let others = lookups
        .others
        .iter()
        .filter(|(label, _)| label.starts_with(prefix))
        .map(|(_, handle)| *handle);
    keyed.chain(others).collect()
}

fn label_of(attributes: &[Attribute]) -> String {
    attributes
        .iter()
        .find_map(|a| match a {
            Attribute::Label(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .unwrap_or_default()
}
