//! Attribute templates for the keys keyrot generates.
//!
//! Every object gets `CKA_TOKEN` and `CKA_PRIVATE` true and `CKA_COPYABLE` false.
//! Secret and private keys also get `CKA_SENSITIVE` true and `CKA_EXTRACTABLE` false,
//! so their value never leaves the token. `CKA_DERIVE` and the recover flags are false
//! because keyrot never uses them; the usage flags start at `Usage::Full`.

use cryptoki::object::{Attribute, KeyType as CkKeyType, ObjectClass};

use super::objects::{ObjectKind, UsageFlags};
use crate::model::{KeyId, KeyType, Usage};

/// DER encoding of the OID 1.2.840.10045.3.1.7 (NIST P-256, secp256r1), the
/// `CKA_EC_PARAMS` value of a P-256 key.
pub(super) const P256_PARAMS: [u8; 10] =
    [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// RSA modulus size of `KeyType::Rsa3072`, in bits.
const RSA_MODULUS_BITS: u64 = 3072;

/// RSA public exponent 65537, big-endian.
const RSA_PUBLIC_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// AES-256 key length, in bytes.
const AES_256_KEY_BYTES: u64 = 32;

/// Returns the `CKA_KEY_TYPE` of the objects of a `key_type` key.
pub(super) fn ck_key_type(key_type: KeyType) -> CkKeyType {
    match key_type {
        KeyType::Aes256 => CkKeyType::AES,
        KeyType::EcP256 => CkKeyType::EC,
        KeyType::Rsa3072 => CkKeyType::RSA,
    }
}

fn identity(id: &KeyId, label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Id(id.0.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Copyable(false),
        Attribute::Derive(false),
    ]
}

fn protected() -> [Attribute; 2] {
    [Attribute::Sensitive(true), Attribute::Extractable(false)]
}

/// Template for `C_GenerateKey` with `CKM_AES_KEY_GEN`.
pub(super) fn secret_key(id: &KeyId, label: &str) -> Vec<Attribute> {
    let mut template = identity(id, label);
    template.extend(protected());
    template.push(Attribute::Class(ObjectClass::SECRET_KEY));
    template.push(Attribute::KeyType(CkKeyType::AES));
    template.push(Attribute::ValueLen(AES_256_KEY_BYTES.into()));
    template.extend(
        UsageFlags::expected(ObjectKind::SecretKey, Usage::Full).to_template(ObjectKind::SecretKey),
    );
    template
}

/// Public-key template for `C_GenerateKeyPair` of a `key_type` pair.
pub(super) fn public_key(key_type: KeyType, id: &KeyId, label: &str) -> Vec<Attribute> {
    let mut template = identity(id, label);
    template.push(Attribute::VerifyRecover(false));
    match key_type {
        KeyType::EcP256 => template.push(Attribute::EcParams(P256_PARAMS.to_vec())),
        KeyType::Rsa3072 => {
            template.push(Attribute::ModulusBits(RSA_MODULUS_BITS.into()));
            template.push(Attribute::PublicExponent(RSA_PUBLIC_EXPONENT.to_vec()));
        }
        KeyType::Aes256 => unreachable!("AES keys are not pairs"),
    }
    template.extend(
        UsageFlags::expected(ObjectKind::PublicKey, Usage::Full).to_template(ObjectKind::PublicKey),
    );
    template
}

/// Private-key template for `C_GenerateKeyPair`.
pub(super) fn private_key(id: &KeyId, label: &str) -> Vec<Attribute> {
    let mut template = identity(id, label);
    template.extend(protected());
    template.push(Attribute::SignRecover(false));
    template.extend(
        UsageFlags::expected(ObjectKind::PrivateKey, Usage::Full)
            .to_template(ObjectKind::PrivateKey),
    );
    template
}
