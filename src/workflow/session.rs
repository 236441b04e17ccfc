//! Opening the HSM for a run, and comparing the HSM's objects with the ledger.

use crate::config::{Config, read_pin};
use crate::error::{Error, Result};
use crate::hsm::{Hsm, HsmSession, ObjectInfo, ObjectKind, Pin};
use crate::ledger::KeyRow;
use crate::model::{KeyState, KeyType, LABEL_PREFIX, Usage};

/// Lock file of the PKCS#11 call lock in `lock_dir`. Domain names start with a letter
/// or digit, so no domain's `<domain>.lock` can be this file.
const HSM_LOCK_FILE: &str = ".hsm.lock";

/// Reads the PIN and loads the module; the caller logs in with [`login`].
///
/// The PIN file's mode is checked before the module is loaded, so an insecure file
/// stops the run before the HSM is touched.
pub fn open_hsm(config: &Config) -> Result<(Hsm, Pin)> {
    let pin = Pin::new(read_pin(&config.hsm.pin)?);
    let lock_dir = &config.storage.lock_dir;
    std::fs::create_dir_all(lock_dir)
        .and_then(|_| crate::hsm::serialise_calls(&lock_dir.join(HSM_LOCK_FILE)))
        .map_err(|source| Error::Io {
            action: "failed to open the HSM call lock in",
            path: lock_dir.clone(),
            source,
        })?;
    let hsm = Hsm::open(&config.hsm.module, &config.hsm.token_label)?;
    Ok((hsm, pin))
}

/// Logs in to the token opened by [`open_hsm`].
pub fn login<'a>(hsm: &'a Hsm, pin: &Pin) -> Result<HsmSession<'a>> {
    Ok(hsm.login(pin)?)
}

/// A mismatch between one ledger key and the HSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Stable finding code, such as `KEY_MISSING`.
    pub code: &'static str,
    pub domain: String,
    pub version: Option<u32>,
    pub label: String,
    pub expected: String,
    pub found: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (expected {}, found {})",
            self.code, self.label, self.expected, self.found
        )
    }
}

/// Object classes a key of `key_type` consists of.
pub fn expected_kinds(key_type: KeyType) -> &'static [ObjectKind] {
    ObjectKind::for_key_type(key_type)
}

/// Compares one ledger key with the inventory: each of its objects must exist exactly
/// once with the usage flags its state demands, and a destroyed key must have none.
pub fn check_key(inventory: &[ObjectInfo], key: &KeyRow) -> Vec<Mismatch> {
    let mut found = Vec::new();
    let mismatch = |code, expected: String, found: String| Mismatch {
        code,
        domain: key.domain.clone(),
        version: Some(key.version),
        label: key.label.clone(),
        expected,
        found,
    };
    let matching: Vec<&ObjectInfo> = inventory
        .iter()
        .filter(|o| o.label == key.label && o.id == key.key_id.0)
        .collect();
    let Some(usage) = Usage::for_state(key.state) else {
        if !matching.is_empty() {
            found.push(mismatch(
                "DESTROYED_KEY_PRESENT",
                "no object".into(),
                format!("{} object(s)", matching.len()),
            ));
        }
        return found;
    };
    for &kind in expected_kinds(key.key_type) {
        let objects: Vec<&&ObjectInfo> = matching.iter().filter(|o| o.class == kind).collect();
        match objects.as_slice() {
            [] => found.push(mismatch(
                "KEY_MISSING",
                format!("one {kind:?} object with CKA_ID {}", key.key_id),
                "none".into(),
            )),
            [object] => {
                if object.key_type != Some(key.key_type) {
                    found.push(mismatch(
                        "KEY_TYPE_MISMATCH",
                        key.key_type.to_string(),
                        object
                            .key_type
                            .map(|t| t.to_string())
                            .unwrap_or_else(|| "another key type".into()),
                    ));
                }
                if !object.flags.matches(kind, key.key_type, usage) {
                    found.push(mismatch(
                        "USAGE_MISMATCH",
                        format!("{kind:?} usage for state {}", key.state),
                        describe_flags(&object.flags),
                    ));
                }
                let exposed = object.sensitive != Some(true)
                    || object.extractable != Some(false)
                    || object.copyable == Some(true);
                if kind != ObjectKind::PublicKey && exposed {
                    found.push(mismatch(
                        "KEY_EXPOSED",
                        "sensitive, non-extractable and non-copyable".into(),
                        format!(
                            "sensitive={:?} extractable={:?} copyable={:?}",
                            object.sensitive, object.extractable, object.copyable
                        ),
                    ));
                }
            }
            many => found.push(mismatch(
                "KEY_DUPLICATE",
                format!("one {kind:?} object"),
                format!("{} objects with the same CKA_ID and label", many.len()),
            )),
        }
    }
    found
}

/// Lists keyrot objects of `domain` in the inventory that no ledger key accounts for.
pub fn unknown_objects(inventory: &[ObjectInfo], domain: &str, keys: &[KeyRow]) -> Vec<Mismatch> {
    let prefix = format!("{LABEL_PREFIX}{domain}/");
    inventory
        .iter()
        .filter(|o| o.label.starts_with(&prefix))
        .filter(|o| {
            !keys
                .iter()
                .any(|k| k.label == o.label && o.id == k.key_id.0)
        })
        .map(|o| Mismatch {
            code: "UNKNOWN_OBJECT",
            domain: domain.to_string(),
            version: None,
            label: o.label.clone(),
            expected: "no object the ledger does not know".into(),
            found: format!("{:?} object with CKA_ID {}", o.class, hex::encode(&o.id)),
        })
        .collect()
}

/// Compares every key of a domain, and the domain's label space, with the inventory.
pub fn check_domain(inventory: &[ObjectInfo], domain: &str, keys: &[KeyRow]) -> Vec<Mismatch> {
    let mut found: Vec<Mismatch> = keys.iter().flat_map(|k| check_key(inventory, k)).collect();
    found.extend(unknown_objects(inventory, domain, keys));
    found
}

/// Returns the keys whose HSM usage flags differ from their ledger state.
pub fn keys_to_converge<'a>(inventory: &[ObjectInfo], keys: &'a [KeyRow]) -> Vec<&'a KeyRow> {
    keys.iter()
        .filter(|k| k.state != KeyState::Destroyed)
        .filter(|k| {
            check_key(inventory, k)
                .iter()
                .any(|m| m.code == "USAGE_MISMATCH")
        })
        .collect()
}

/// Lists the usage flags that are set, such as `decrypt, unwrap`, or `none`.
fn describe_flags(flags: &crate::hsm::UsageFlags) -> String {
    let named = [
        ("encrypt", flags.encrypt),
        ("decrypt", flags.decrypt),
        ("sign", flags.sign),
        ("verify", flags.verify),
        ("wrap", flags.wrap),
        ("unwrap", flags.unwrap),
    ];
    let set: Vec<&str> = named
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect();
    if set.is_empty() {
        "no usage flags".into()
    } else {
        format!("usage flags {}", set.join(", "))
    }
}
