//! Object classes, usage flags and inventory rows as read back from the token, and the
//! checks that turn the objects found under one `CKA_ID` and label into the parts of
//! one key version.

use std::fmt;

use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};

use super::HsmError;
use super::templates::{P256_PARAMS, ck_key_type};
use crate::model::{KeyId, KeyType, Usage};

/// Object class of a PKCS#11 object (`CKA_CLASS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    SecretKey,
    PrivateKey,
    PublicKey,
    /// Any other class, with its `CKO_*` value.
    Other(u64),
}

impl ObjectKind {
    fn from_class(class: ObjectClass) -> ObjectKind {
        if class == ObjectClass::SECRET_KEY {
            ObjectKind::SecretKey
        } else if class == ObjectClass::PRIVATE_KEY {
            ObjectKind::PrivateKey
        } else if class == ObjectClass::PUBLIC_KEY {
            ObjectKind::PublicKey
        } else {
            ObjectKind::Other(*class)
        }
    }

    /// Returns the classes of the objects that make up one version of a `key_type` key.
    pub fn for_key_type(key_type: KeyType) -> &'static [ObjectKind] {
        if key_type.is_pair() {
            &[ObjectKind::PrivateKey, ObjectKind::PublicKey]
        } else {
            &[ObjectKind::SecretKey]
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKind::SecretKey => f.write_str("secret key"),
            ObjectKind::PrivateKey => f.write_str("private key"),
            ObjectKind::PublicKey => f.write_str("public key"),
            ObjectKind::Other(class) => write!(f, "object of class {class:#x}"),
        }
    }
}

/// Usage attributes of a key object. An attribute that the object's class does not
/// have (such as `CKA_SIGN` on a public key) reads as false.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageFlags {
    pub encrypt: bool,
    pub decrypt: bool,
    pub sign: bool,
    pub verify: bool,
    pub wrap: bool,
    pub unwrap: bool,
}

impl UsageFlags {
    /// Flags that an object of class `kind` carries at usage level `usage`.
    ///
    /// Secret keys encrypt, decrypt, wrap and unwrap, and keep only decrypt and unwrap
    /// when read-only. Private keys sign, and lose that when read-only. Public keys
    /// verify at both levels. At `Usage::None` every flag is false.
    pub fn expected(kind: ObjectKind, usage: Usage) -> UsageFlags {
        let none = UsageFlags::default();
        match (kind, usage) {
            (_, Usage::None) | (ObjectKind::Other(_), _) => none,
            (ObjectKind::SecretKey, Usage::Full) => UsageFlags {
                encrypt: true,
                decrypt: true,
                wrap: true,
                unwrap: true,
                ..none
            },
            (ObjectKind::SecretKey, Usage::ReadOnly) => UsageFlags {
                decrypt: true,
                unwrap: true,
                ..none
            },
            (ObjectKind::PrivateKey, Usage::Full) => UsageFlags { sign: true, ..none },
            (ObjectKind::PrivateKey, Usage::ReadOnly) => none,
            (ObjectKind::PublicKey, Usage::Full | Usage::ReadOnly) => UsageFlags {
                verify: true,
                ..none
            },
        }
    }

    /// Whether these flags are exactly those an object of class `kind`, belonging to a
    /// key of `key_type`, must carry at `usage`. A class that a key of `key_type`
    /// does not have (a secret key for an EC key, say) never matches.
    pub fn matches(&self, kind: ObjectKind, key_type: KeyType, usage: Usage) -> bool {
        ObjectKind::for_key_type(key_type).contains(&kind)
            && *self == UsageFlags::expected(kind, usage)
    }

    /// Usage attributes that objects of class `kind` have, and so can be set.
    fn settable(kind: ObjectKind) -> &'static [AttributeType] {
        use AttributeType::*;
        match kind {
            ObjectKind::SecretKey => &[Encrypt, Decrypt, Sign, Verify, Wrap, Unwrap],
            ObjectKind::PrivateKey => &[Decrypt, Sign, Unwrap],
            ObjectKind::PublicKey => &[Encrypt, Verify, Wrap],
            ObjectKind::Other(_) => &[],
        }
    }

    /// Template that sets every usage attribute of class `kind` to these flags.
    pub(super) fn to_template(self, kind: ObjectKind) -> Vec<Attribute> {
        UsageFlags::settable(kind)
            .iter()
            .filter_map(|attribute| match attribute {
                AttributeType::Encrypt => Some(Attribute::Encrypt(self.encrypt)),
                AttributeType::Decrypt => Some(Attribute::Decrypt(self.decrypt)),
                AttributeType::Sign => Some(Attribute::Sign(self.sign)),
                AttributeType::Verify => Some(Attribute::Verify(self.verify)),
                AttributeType::Wrap => Some(Attribute::Wrap(self.wrap)),
                AttributeType::Unwrap => Some(Attribute::Unwrap(self.unwrap)),
                _ => None,
            })
            .collect()
    }
}

/// One object on the token, as listed by `HsmSession::inventory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// `CKA_LABEL`, with invalid UTF-8 replaced by U+FFFD.
    pub label: String,
    /// `CKA_ID`; keyrot's own keys have 16 bytes.
    pub id: Vec<u8>,
    pub class: ObjectKind,
    /// keyrot key type that the object's algorithm and size match, if any. RSA private
    /// keys report no size, so any RSA private key shows as `Rsa3072`.
    pub key_type: Option<KeyType>,
    pub flags: UsageFlags,
    /// `CKA_SENSITIVE`; `None` for classes without it (public keys).
    pub sensitive: Option<bool>,
    /// `CKA_EXTRACTABLE`; `None` for classes without it (public keys).
    pub extractable: Option<bool>,
    /// `CKA_COPYABLE`; `None` if the token does not report it.
    pub copyable: Option<bool>,
    /// `CKA_TOKEN`: the object persists beyond the session.
    pub token: bool,
    /// `CKA_PRIVATE`: the object is visible only after login.
    pub private: bool,
}

impl ObjectInfo {
    /// Returns the `CKA_ID` as a [`KeyId`] if it has the 16 bytes keyrot uses.
    pub fn key_id(&self) -> Option<KeyId> {
        let bytes: [u8; 16] = self.id.as_slice().try_into().ok()?;
        Some(KeyId(bytes))
    }

    pub(super) fn from_attributes(attributes: &[Attribute]) -> ObjectInfo {
        let mut info = ObjectInfo {
            label: String::new(),
            id: Vec::new(),
            class: ObjectKind::Other(u64::MAX),
            key_type: None,
            flags: UsageFlags::default(),
            sensitive: None,
            extractable: None,
            copyable: None,
            token: false,
            private: false,
        };
        let mut ck_type = None;
        let mut value_len = None;
        let mut ec_params = None;
        let mut modulus_bits = None;
        for attribute in attributes {
            match attribute {
                Attribute::Label(bytes) => info.label = String::from_utf8_lossy(bytes).into_owned(),
                Attribute::Id(bytes) => info.id = bytes.clone(),
                Attribute::Class(class) => info.class = ObjectKind::from_class(*class),
                Attribute::KeyType(key_type) => ck_type = Some(*key_type),
                Attribute::Encrypt(on) => info.flags.encrypt = *on,
                Attribute::Decrypt(on) => info.flags.decrypt = *on,
                Attribute::Sign(on) => info.flags.sign = *on,
                Attribute::Verify(on) => info.flags.verify = *on,
                Attribute::Wrap(on) => info.flags.wrap = *on,
                Attribute::Unwrap(on) => info.flags.unwrap = *on,
                Attribute::Sensitive(on) => info.sensitive = Some(*on),
                Attribute::Extractable(on) => info.extractable = Some(*on),
                Attribute::Copyable(on) => info.copyable = Some(*on),
                Attribute::Token(on) => info.token = *on,
                Attribute::Private(on) => info.private = *on,
                Attribute::ValueLen(len) => value_len = Some(u64::from(*len)),
                Attribute::EcParams(params) => ec_params = Some(params.clone()),
                Attribute::ModulusBits(bits) => modulus_bits = Some(u64::from(*bits)),
                _ => {}
            }
        }
        info.key_type = ck_type.and_then(|ck_type| {
            if ck_type == CkKeyType::AES && value_len == Some(32) {
                Some(KeyType::Aes256)
            } else if ck_type == CkKeyType::EC && ec_params.as_deref() == Some(&P256_PARAMS[..]) {
                Some(KeyType::EcP256)
            } else if ck_type == CkKeyType::RSA && modulus_bits.is_none_or(|bits| bits == 3072) {
                Some(KeyType::Rsa3072)
            } else {
                None
            }
        });
        info
    }
}

/// Attributes that `HsmSession::inventory` reads from every object.
pub(super) const INVENTORY_ATTRIBUTES: [AttributeType; 18] = [
    AttributeType::Label,
    AttributeType::Id,
    AttributeType::Class,
    AttributeType::KeyType,
    AttributeType::Encrypt,
    AttributeType::Decrypt,
    AttributeType::Sign,
    AttributeType::Verify,
    AttributeType::Wrap,
    AttributeType::Unwrap,
    AttributeType::Sensitive,
    AttributeType::Extractable,
    AttributeType::Copyable,
    AttributeType::Token,
    AttributeType::Private,
    AttributeType::ValueLen,
    AttributeType::EcParams,
    AttributeType::ModulusBits,
];

/// Attributes read from each object that a lookup by `CKA_ID` and label finds. All have
/// a fixed size, so cryptoki reads them with a single `C_GetAttributeValue`.
pub(super) const FOUND_ATTRIBUTES: [AttributeType; 4] = [
    AttributeType::Class,
    AttributeType::KeyType,
    AttributeType::Sensitive,
    AttributeType::Extractable,
];

/// One object found under a key version's `CKA_ID` and label.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub handle: ObjectHandle,
    pub kind: ObjectKind,
    pub ck_key_type: Option<CkKeyType>,
    pub sensitive: Option<bool>,
    pub extractable: Option<bool>,
}

impl Found {
    /// Reads the fields from attributes that include [`FOUND_ATTRIBUTES`].
    pub fn from_attributes(handle: ObjectHandle, attributes: &[Attribute]) -> Found {
        let mut found = Found {
            handle,
            kind: ObjectKind::Other(u64::MAX),
            ck_key_type: None,
            sensitive: None,
            extractable: None,
        };
        for attribute in attributes {
            match attribute {
                Attribute::Class(class) => found.kind = ObjectKind::from_class(*class),
                Attribute::KeyType(key_type) => found.ck_key_type = Some(*key_type),
                Attribute::Sensitive(on) => found.sensitive = Some(*on),
                Attribute::Extractable(on) => found.extractable = Some(*on),
                _ => {}
            }
        }
        found
    }
}

/// The objects of one key version, checked for class, key type, protection and
/// uniqueness; a part may be missing.
#[derive(Debug)]
pub(super) struct KeyParts {
    label: String,
    id: String,
    secret: Option<ObjectHandle>,
    private: Option<ObjectHandle>,
    public: Option<ObjectHandle>,
}

impl KeyParts {
    /// Checks the objects found under `id` and `label` against what keyrot creates for
    /// `key_type`: no class other than the key type's, no second object of a class,
    /// the right `CKA_KEY_TYPE`, and secret and private keys sensitive and
    /// non-extractable.
    pub fn resolve(
        found: &[Found],
        key_type: KeyType,
        id: &str,
        label: &str,
    ) -> Result<KeyParts, HsmError> {
        let unexpected = |object: &Found, reason: String| HsmError::UnexpectedObject {
            label: label.to_string(),
            id: id.to_string(),
            class: object.kind,
            reason,
        };
        let expected_kinds = ObjectKind::for_key_type(key_type);
        let expected_ck_type = ck_key_type(key_type);
        for object in found {
            if !expected_kinds.contains(&object.kind) {
                return Err(unexpected(
                    object,
                    format!("a {key_type} key has no object of this class"),
                ));
            }
            if object.ck_key_type != Some(expected_ck_type) {
                let actual = object
                    .ck_key_type
                    .map_or_else(|| "missing".to_string(), |t| t.to_string());
                return Err(unexpected(
                    object,
                    format!("CKA_KEY_TYPE is {actual}, expected {expected_ck_type}"),
                ));
            }
            if object.kind != ObjectKind::PublicKey {
                if object.sensitive != Some(true) {
                    return Err(unexpected(object, "CKA_SENSITIVE is not true".to_string()));
                }
                if object.extractable != Some(false) {
                    return Err(unexpected(
                        object,
                        "CKA_EXTRACTABLE is not false".to_string(),
                    ));
                }
            }
        }

        let one = |kind: ObjectKind| -> Result<Option<ObjectHandle>, HsmError> {
            let mut matching = found.iter().filter(|object| object.kind == kind);
            let first = matching.next().map(|object| object.handle);
            let extra = matching.count();
            if extra > 0 {
                return Err(HsmError::DuplicateObjects {
                    label: label.to_string(),
                    id: id.to_string(),
                    class: kind,
                    count: extra + 1,
                });
            }
            Ok(first)
        };
        Ok(KeyParts {
            label: label.to_string(),
            id: id.to_string(),
            secret: one(ObjectKind::SecretKey)?,
            private: one(ObjectKind::PrivateKey)?,
            public: one(ObjectKind::PublicKey)?,
        })
    }

    /// Returns the handle of the object of class `kind`, or `ObjectNotFound`.
    pub fn require(&self, kind: ObjectKind) -> Result<ObjectHandle, HsmError> {
        let handle = match kind {
            ObjectKind::SecretKey => self.secret,
            ObjectKind::PrivateKey => self.private,
            ObjectKind::PublicKey => self.public,
            ObjectKind::Other(_) => None,
        };
        handle.ok_or_else(|| HsmError::ObjectNotFound {
            label: self.label.clone(),
            id: self.id.clone(),
            class: kind,
        })
    }

    /// Returns every object of a `key_type` key, or `ObjectNotFound` for the first
    /// one missing.
    pub fn require_all(
        &self,
        key_type: KeyType,
    ) -> Result<Vec<(ObjectKind, ObjectHandle)>, HsmError> {
        ObjectKind::for_key_type(key_type)
            .iter()
            .map(|kind| Ok((*kind, self.require(*kind)?)))
            .collect()
    }

    /// Reports whether every object of a `key_type` key is present.
    pub fn is_complete(&self, key_type: KeyType) -> bool {
        self.require_all(key_type).is_ok()
    }

    /// Handles of the objects present.
    pub fn present(&self) -> Vec<ObjectHandle> {
        [self.secret, self.private, self.public]
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_flags_per_usage() {
        let secret_read_only = UsageFlags::expected(ObjectKind::SecretKey, Usage::ReadOnly);
        assert!(!secret_read_only.encrypt);
        assert!(secret_read_only.decrypt);
        assert!(!secret_read_only.wrap);
        assert!(secret_read_only.unwrap);

        let private_full = UsageFlags::expected(ObjectKind::PrivateKey, Usage::Full);
        assert!(private_full.sign);
        assert!(!private_full.decrypt);

        let public_read_only = UsageFlags::expected(ObjectKind::PublicKey, Usage::ReadOnly);
        assert!(public_read_only.verify);
        assert!(!public_read_only.encrypt);

        for kind in [
            ObjectKind::SecretKey,
            ObjectKind::PrivateKey,
            ObjectKind::PublicKey,
        ] {
            assert_eq!(
                UsageFlags::expected(kind, Usage::None),
                UsageFlags::default()
            );
        }
    }

    #[test]
    fn matches_rejects_class_of_other_key_type() {
        let flags = UsageFlags::expected(ObjectKind::SecretKey, Usage::Full);
        assert!(flags.matches(ObjectKind::SecretKey, KeyType::Aes256, Usage::Full));
        assert!(!flags.matches(ObjectKind::SecretKey, KeyType::EcP256, Usage::Full));
        assert!(!flags.matches(ObjectKind::SecretKey, KeyType::Aes256, Usage::ReadOnly));
    }

    #[test]
    fn template_sets_only_class_attributes() {
        let template = UsageFlags::expected(ObjectKind::PublicKey, Usage::Full)
            .to_template(ObjectKind::PublicKey);
        assert_eq!(
            template,
            vec![
                Attribute::Encrypt(false),
                Attribute::Verify(true),
                Attribute::Wrap(false)
            ]
        );
    }
}
