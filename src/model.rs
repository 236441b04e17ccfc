//! Vocabulary shared by every layer: key types, key states and key identifiers.
//! This module has no I/O and depends on no other keyrot module.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Key algorithm and size of a domain's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    #[serde(rename = "aes-256")]
    Aes256,
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
}

impl KeyType {
    pub const ALL: [KeyType; 3] = [KeyType::Aes256, KeyType::EcP256, KeyType::Rsa3072];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes256 => "aes-256",
            KeyType::EcP256 => "ec-p256",
            KeyType::Rsa3072 => "rsa-3072",
        }
    }

    /// Returns whether the key is an asymmetric pair (a private and a public object).
    pub fn is_pair(self) -> bool {
        !matches!(self, KeyType::Aes256)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("unknown key type {s:?} (expected aes-256, ec-p256 or rsa-3072)")
            })
    }
}

/// Life-cycle state of one key version, after NIST SP 800-57.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Pending,
    Active,
    Deprecated,
    Revoked,
    Destroyed,
}

impl KeyState {
    pub const ALL: [KeyState; 5] = [
        KeyState::Pending,
        KeyState::Active,
        KeyState::Deprecated,
        KeyState::Revoked,
        KeyState::Destroyed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Deprecated => "deprecated",
            KeyState::Revoked => "revoked",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// Returns whether the state model allows moving from `self` to `next`.
    pub fn can_become(self, next: KeyState) -> bool {
        use KeyState::*;
        matches!(
            (self, next),
            (Pending, Active)
                | (Pending, Destroyed)
                | (Active, Deprecated)
                | (Active, Revoked)
                | (Deprecated, Revoked)
                | (Revoked, Destroyed)
        )
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown key state {s:?}"))
    }
}

/// Usage flags a key object carries in the HSM for a given ledger state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Encrypt, decrypt, sign, verify, wrap and unwrap as the key type allows.
    Full,
    /// Decrypt, verify and unwrap only.
    ReadOnly,
    /// Every usage flag false.
    None,
}

impl Usage {
    /// Usage the HSM must show for a key in `state`; `None` for a destroyed key,
    /// which has no object.
    pub fn for_state(state: KeyState) -> Option<Usage> {
        match state {
            KeyState::Pending | KeyState::Active => Some(Usage::Full),
            KeyState::Deprecated => Some(Usage::ReadOnly),
            KeyState::Revoked => Some(Usage::None),
            KeyState::Destroyed => None,
        }
    }
}

/// Random 16-byte `CKA_ID` that, with the label, names one key version.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    pub fn random() -> KeyId {
        KeyId(rand::random())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<KeyId, String> {
        let bytes = hex::decode(s).map_err(|e| format!("invalid key id {s:?}: {e}"))?;
        let array: [u8; 16] = bytes
            .try_into()
            .map_err(|_| format!("invalid key id {s:?}: expected 16 bytes"))?;
        Ok(KeyId(array))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// HSM label of a domain's key version: `keyrot/<domain>/v<N>`.
pub fn key_label(domain: &str, version: u32) -> String {
    format!("keyrot/{domain}/v{version}")
}

/// Prefix that every object keyrot creates carries in its label.
pub const LABEL_PREFIX: &str = "keyrot/";

/// Label of the P-256 key that signs audit checkpoints.
pub const AUDIT_KEY_LABEL: &str = "keyrot/.audit/checkpoint";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_state_model() {
        use KeyState::*;
        assert!(Pending.can_become(Active));
        assert!(Revoked.can_become(Destroyed));
        assert!(!Deprecated.can_become(Active));
        assert!(!Revoked.can_become(Revoked));
        assert!(!Destroyed.can_become(Pending));
    }

    #[test]
    fn key_id_hex_round_trip() {
        let id = KeyId::random();
        assert_eq!(KeyId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(KeyId::from_hex("abcd").is_err());
    }
}
