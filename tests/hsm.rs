//! Integration tests of `keyrot::hsm` against a real SoftHSM2 token.
//!
//! Each test body runs in its own child process with its own token (see
//! `common::run_with_token`), because SoftHSM takes its configuration from the process
//! environment. Attributes are read back through cryptoki directly, so that the checks
//! do not depend on the code under test.

mod common;

use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use keyrot::hsm::{
    GenerateOutcome, Hsm, HsmError, HsmErrorKind, HsmSession, ObjectKind, Pin, UsageFlags,
};
use keyrot::model::{AUDIT_KEY_LABEL, KeyId, KeyType, Usage, key_label};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

use common::TokenEnv;

/// Declares a test whose body runs with a fresh token in a child process.
macro_rules! hsm_test {
    ($name:ident, |$env:ident| $body:block) => {
        #[test]
        fn $name() {
            common::run_with_token(stringify!($name), |$env: &TokenEnv| $body);
        }
    };
}

fn open(env: &TokenEnv) -> Hsm {
    Hsm::open(&env.module, &env.label).expect("open the test token")
}

fn login<'h>(hsm: &'h Hsm, env: &TokenEnv) -> HsmSession<'h> {
    hsm.login(&Pin::new(env.pin.clone()))
        .expect("log in to the test token")
}

/// A session opened through cryptoki directly, for reading and planting objects.
struct Raw {
    _context: Pkcs11,
    session: Session,
}

impl Raw {
    fn open(env: &TokenEnv) -> Raw {
        let context = Pkcs11::new(&env.module).unwrap();
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(error) => panic!("C_Initialize failed: {error}"),
        }
        let slot = context
            .get_slots_with_initialized_token()
            .unwrap()
            .into_iter()
            .find(|slot| context.get_token_info(*slot).unwrap().label().trim_end() == env.label)
            .expect("slot of the test token");
        let session = context.open_rw_session(slot).unwrap();
        match session.login(UserType::User, Some(&AuthPin::from(env.pin.as_str()))) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(error) => panic!("C_Login failed: {error}"),
        }
        Raw {
            _context: context,
            session,
        }
    }

    fn find(&self, id: &KeyId, label: &str) -> Vec<ObjectHandle> {
        self.session
            .find_objects(&[
                Attribute::Id(id.0.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .unwrap()
    }

    /// Returns the object of `class` under `id` and `label`, and panics unless there
    /// is exactly one.
    fn object(&self, id: &KeyId, label: &str, class: ObjectClass) -> ObjectHandle {
        let matching: Vec<ObjectHandle> = self
            .find(id, label)
            .into_iter()
            .filter(|handle| self.class(*handle) == class)
            .collect();
        assert_eq!(matching.len(), 1, "objects of class {class} under {label}");
        matching[0]
    }

    fn class(&self, handle: ObjectHandle) -> ObjectClass {
        match self
            .session
            .get_attributes(handle, &[AttributeType::Class])
            .unwrap()[..]
        {
            [Attribute::Class(class)] => class,
            ref other => panic!("unexpected CKA_CLASS read: {other:?}"),
        }
    }

    /// Reads a boolean attribute, or returns `None` if the object has no such
    /// attribute.
    fn flag(&self, handle: ObjectHandle, attribute: AttributeType) -> Option<bool> {
        let attributes = self.session.get_attributes(handle, &[attribute]).unwrap();
        match attributes.first() {
            None => None,
            Some(
                Attribute::Sensitive(on)
                | Attribute::Extractable(on)
                | Attribute::Copyable(on)
                | Attribute::Token(on)
                | Attribute::Private(on)
                | Attribute::Encrypt(on)
                | Attribute::Decrypt(on)
                | Attribute::Sign(on)
                | Attribute::Verify(on)
                | Attribute::Wrap(on)
                | Attribute::Unwrap(on)
                | Attribute::Derive(on),
            ) => Some(*on),
            Some(other) => panic!("not a boolean attribute: {other:?}"),
        }
    }

    fn usage(&self, handle: ObjectHandle) -> UsageFlags {
        let flag = |attribute| self.flag(handle, attribute).unwrap_or(false);
        UsageFlags {
            encrypt: flag(AttributeType::Encrypt),
            decrypt: flag(AttributeType::Decrypt),
            sign: flag(AttributeType::Sign),
            verify: flag(AttributeType::Verify),
            wrap: flag(AttributeType::Wrap),
            unwrap: flag(AttributeType::Unwrap),
        }
    }

    /// Generates an AES key under `id` and `label` with the given extractability,
    /// bypassing keyrot.
    fn plant_aes_key(&self, id: &KeyId, label: &str, extractable: bool) -> ObjectHandle {
        let template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(extractable),
            Attribute::ValueLen(32u64.into()),
            Attribute::Id(id.0.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ];
        self.session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .unwrap()
    }
}

/// Checks the protection attributes every keyrot object must have.
fn assert_protected(raw: &Raw, handle: ObjectHandle, class: ObjectClass) {
    assert_eq!(
        raw.flag(handle, AttributeType::Token),
        Some(true),
        "{class} CKA_TOKEN"
    );
    assert_eq!(
        raw.flag(handle, AttributeType::Private),
        Some(true),
        "{class} CKA_PRIVATE"
    );
    assert_eq!(
        raw.flag(handle, AttributeType::Copyable),
        Some(false),
        "{class} CKA_COPYABLE"
    );
    assert_eq!(
        raw.flag(handle, AttributeType::Derive),
        Some(false),
        "{class} CKA_DERIVE"
    );
    if class != ObjectClass::PUBLIC_KEY {
        assert_eq!(
            raw.flag(handle, AttributeType::Sensitive),
            Some(true),
            "{class} CKA_SENSITIVE"
        );
        assert_eq!(
            raw.flag(handle, AttributeType::Extractable),
            Some(false),
            "{class} CKA_EXTRACTABLE"
        );
    }
}

fn classes(key_type: KeyType) -> Vec<(ObjectClass, ObjectKind)> {
    if key_type.is_pair() {
        vec![
            (ObjectClass::PRIVATE_KEY, ObjectKind::PrivateKey),
            (ObjectClass::PUBLIC_KEY, ObjectKind::PublicKey),
        ]
    } else {
        vec![(ObjectClass::SECRET_KEY, ObjectKind::SecretKey)]
    }
}

fn assert_usage(raw: &Raw, key_type: KeyType, id: &KeyId, label: &str, usage: Usage) {
    for (class, kind) in classes(key_type) {
        let flags = raw.usage(raw.object(id, label, class));
        assert_eq!(
            flags,
            UsageFlags::expected(kind, usage),
            "{key_type} {class} at {usage:?}"
        );
        assert!(flags.matches(kind, key_type, usage));
    }
}

/// Generates a key of `key_type` and checks its objects on the token.
fn check_generated_key(env: &TokenEnv, key_type: KeyType) {
    let hsm = open(env);
    let session = login(&hsm, env);
    let raw = Raw::open(env);
    let id = KeyId::random();
    let label = key_label("payments", 1);

    assert_eq!(
        session.generate(key_type, &id, &label).unwrap(),
        GenerateOutcome::Created
    );

    let expected_count = if key_type.is_pair() { 2 } else { 1 };
    assert_eq!(session.count(&id, &label).unwrap(), expected_count);
    for (class, _) in classes(key_type) {
        assert_protected(&raw, raw.object(&id, &label, class), class);
    }
    assert_usage(&raw, key_type, &id, &label, Usage::Full);
    session.self_test(key_type, &id, &label).unwrap();

    let check_value = session.check_value(key_type, &id, &label).unwrap();
    assert_eq!(check_value.len(), 6);
    assert!(check_value.chars().all(|c| c.is_ascii_hexdigit()));

    // A second run adopts the objects instead of generating new ones.
    assert_eq!(
        session.generate(key_type, &id, &label).unwrap(),
        GenerateOutcome::Adopted
    );
    assert_eq!(raw.find(&id, &label).len(), expected_count);
}

hsm_test!(generate_aes_key, |env| {
    check_generated_key(env, KeyType::Aes256);
});

hsm_test!(generate_ec_pair, |env| {
    check_generated_key(env, KeyType::EcP256);
});

hsm_test!(generate_rsa_pair, |env| {
    check_generated_key(env, KeyType::Rsa3072);
    let raw = Raw::open(env);
    let hsm = open(env);
    let session = login(&hsm, env);
    let info = session.inventory().unwrap();
    let public = info
        .iter()
        .find(|o| o.class == ObjectKind::PublicKey)
        .unwrap();
    assert_eq!(public.key_type, Some(KeyType::Rsa3072));
    let handle = raw.object(
        &public.key_id().unwrap(),
        &public.label,
        ObjectClass::PUBLIC_KEY,
    );
    let bits = raw
        .session
        .get_attributes(handle, &[AttributeType::ModulusBits])
        .unwrap();
    assert_eq!(bits, vec![Attribute::ModulusBits(3072u64.into())]);
});

hsm_test!(apply_usage_read_only_and_none, |env| {
    let hsm = open(env);
    let session = login(&hsm, env);
    let raw = Raw::open(env);
    for key_type in KeyType::ALL {
        let id = KeyId::random();
        let label = key_label(key_type.as_str(), 1);
        session.generate(key_type, &id, &label).unwrap();

        session
            .apply_usage(key_type, &id, &label, Usage::ReadOnly)
            .unwrap();
        assert_usage(&raw, key_type, &id, &label, Usage::ReadOnly);
        // Applying the same usage again changes nothing.
        session
            .apply_usage(key_type, &id, &label, Usage::ReadOnly)
            .unwrap();
        assert_usage(&raw, key_type, &id, &label, Usage::ReadOnly);

        let error = session.self_test(key_type, &id, &label).unwrap_err();
        assert!(
            matches!(&error, HsmError::SelfTestFailed { reason, .. } if reason.contains("CKR_KEY_FUNCTION_NOT_PERMITTED")),
            "{key_type}: {error:?}"
        );

        session
            .apply_usage(key_type, &id, &label, Usage::None)
            .unwrap();
        assert_usage(&raw, key_type, &id, &label, Usage::None);
    }
});

hsm_test!(read_only_aes_flags, |env| {
    let hsm = open(env);
    let session = login(&hsm, env);
    let raw = Raw::open(env);
    let id = KeyId::random();
    let label = key_label("flags", 1);
    session.generate(KeyType::Aes256, &id, &label).unwrap();
    session
        .apply_usage(KeyType::Aes256, &id, &label, Usage::ReadOnly)
        .unwrap();
    let key = raw.object(&id, &label, ObjectClass::SECRET_KEY);
    assert_eq!(raw.flag(key, AttributeType::Encrypt), Some(false));
    assert_eq!(raw.flag(key, AttributeType::Wrap), Some(false));
    assert_eq!(raw.flag(key, AttributeType::Decrypt), Some(true));
    assert_eq!(raw.flag(key, AttributeType::Unwrap), Some(true));
});

hsm_test!(check_value_survives_revocation, |env| {
    let hsm = open(env);
    let session = login(&hsm, env);
    let raw = Raw::open(env);
    for key_type in KeyType::ALL {
        let id = KeyId::random();
        let label = key_label(key_type.as_str(), 2);
        session.generate(key_type, &id, &label).unwrap();
        let active = session.check_value(key_type, &id, &label).unwrap();
        session
            .apply_usage(key_type, &id, &label, Usage::None)
            .unwrap();
        let revoked = session.check_value(key_type, &id, &label).unwrap();
        assert_eq!(active, revoked, "{key_type}");
    }

    // The AES check value is the start of the encryption of a zero block.
    let id = KeyId::random();
    let label = key_label("kcv", 1);
    session.generate(KeyType::Aes256, &id, &label).unwrap();
    let key = raw.object(&id, &label, ObjectClass::SECRET_KEY);
    let zero_block = raw
        .session
        .encrypt(&Mechanism::AesEcb, key, &[0u8; 16])
        .unwrap();
    assert_eq!(
        session.check_value(KeyType::Aes256, &id, &label).unwrap(),
        hex::encode(&zero_block[..3])
    );

    // The EC check value is the start of the SHA-256 digest of the SEC1 point.
    let id = KeyId::random();
    let label = key_label("kcv", 2);
    session.generate(KeyType::EcP256, &id, &label).unwrap();
    let public = raw.object(&id, &label, ObjectClass::PUBLIC_KEY);
    let point = match &raw
        .session
        .get_attributes(public, &[AttributeType::EcPoint])
        .unwrap()[..]
    {
        [Attribute::EcPoint(der)] => der[2..].to_vec(),
        other => panic!("unexpected CKA_EC_POINT read: {other:?}"),
    };
    assert_eq!(
        session.check_value(KeyType::EcP256, &id, &label).unwrap(),
        hex::encode(&Sha256::digest(&point)[..3])
    );
});

hsm_test!(destroy_removes_every_object, |env| {
    let hsm = open(env);
    let session = login(&hsm, env);
    let raw = Raw::open(env);
    for key_type in KeyType::ALL {
        let id = KeyId::random();
        let label = key_label(key_type.as_str(), 3);
        session.generate(key_type, &id, &label).unwrap();
        session.destroy(&id, &label).unwrap();
        assert_eq!(session.count(&id, &label).unwrap(), 0);
        assert!(raw.find(&id, &label).is_empty());
        // Destroying a key version with no objects succeeds.
        session.destroy(&id, &label).unwrap();

        let error = session.self_test(key_type, &id, &label).unwrap_err();
        assert!(
            matches!(error, HsmError::ObjectNotFound { .. }),
            "{error:?}"
        );
        assert_eq!(error.kind(), HsmErrorKind::Inconsistent);
    }
});

hsm_test!(destroy_notices_objects_gone, |env| {
    let hsm = open(env);
    let session = login(&hsm, env);
    let raw = Raw::open(env);
    let id = KeyId::random();
    let label = key_label("gone", 1);
    session.generate(KeyType::EcP256, &id, &label).unwrap();
    // Another process destroys the pair behind the session's cached handles.
    for handle in raw.find(&id, &label) {
        raw.session.destroy_object(handle).unwrap();
    }
    session.destroy(&id, &label).unwrap();
    let error = session
        .apply_usage(KeyType::EcP256, &id, &label, Usage::None)
        .unwrap_err();
    assert!(
        matches!(error, HsmError::ObjectNotFound { .. }),
        "{error:?}"
    );
});

hsm_test!(generate_replaces_partial_pair, |env| {
    let hsm = open(env);
    let raw = Raw::open(env);
    let id = KeyId::random();
    let label = key_label("partial", 1);
    {
        let session = login(&hsm, env);
        session.generate(KeyType::EcP256, &id, &label).unwrap();
    }
    // A run killed inside key generation can leave only one half of the pair.
    let private = raw.object(&id, &label, ObjectClass::PRIVATE_KEY);
    raw.session.destroy_object(private).unwrap();

    let session = login(&hsm, env);
    let outcome = session.generate(KeyType::EcP256, &id, &label).unwrap();
    assert_eq!(outcome, GenerateOutcome::ReplacedPartial { destroyed: 1 });
    assert_eq!(raw.find(&id, &label).len(), 2);
    session.self_test(KeyType::EcP256, &id, &label).unwrap();
});

hsm_test!(duplicate_objects_are_inconsistent, |env| {
    let hsm = open(env);
    let raw = Raw::open(env);
    let id = KeyId::random();
    let label = key_label("dup", 1);
    {
        let session = login(&hsm, env);
        session.generate(KeyType::Aes256, &id, &label).unwrap();
    }
    raw.plant_aes_key(&id, &label, false);

    let session = login(&hsm, env);
    assert_eq!(session.count(&id, &label).unwrap(), 2);
    let errors = [
        session.generate(KeyType::Aes256, &id, &label).unwrap_err(),
        session.self_test(KeyType::Aes256, &id, &label).unwrap_err(),
        session
            .apply_usage(KeyType::Aes256, &id, &label, Usage::ReadOnly)
            .unwrap_err(),
        session.destroy(&id, &label).unwrap_err(),
    ];
    for error in errors {
        assert!(
            matches!(
                &error,
                HsmError::DuplicateObjects {
                    count: 2,
                    class: ObjectKind::SecretKey,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(error.kind(), HsmErrorKind::Inconsistent);
        assert!(error.to_string().contains(&id.to_hex()), "{error}");
    }
    // Nothing was destroyed or changed.
    assert_eq!(raw.find(&id, &label).len(), 2);
});

hsm_test!(extractable_object_is_rejected, |env| {
    let hsm = open(env);
    let session = login(&hsm, env);
    let raw = Raw::open(env);
    let id = KeyId::random();
    let label = key_label("foreign", 1);
    raw.plant_aes_key(&id, &label, true);

    let error = session.generate(KeyType::Aes256, &id, &label).unwrap_err();
    assert!(
        matches!(&error, HsmError::UnexpectedObject { reason, .. } if reason.contains("CKA_EXTRACTABLE")),
        "{error:?}"
    );
    assert_eq!(error.kind(), HsmErrorKind::Inconsistent);

    let error = session.generate(KeyType::EcP256, &id, &label).unwrap_err();
    assert!(
        matches!(error, HsmError::UnexpectedObject { .. }),
        "{error:?}"
    );
});

hsm_test!(inventory_lists_keyrot_objects, |env| {
    let hsm = open(env);
    let session = login(&hsm, env);
    let raw = Raw::open(env);
    let aes_id = KeyId::random();
    let ec_id = KeyId::random();
    session
        .generate(KeyType::Aes256, &aes_id, &key_label("inv", 1))
        .unwrap();
    session
        .generate(KeyType::EcP256, &ec_id, &key_label("inv", 2))
        .unwrap();
    session
        .apply_usage(
            KeyType::EcP256,
            &ec_id,
            &key_label("inv", 2),
            Usage::ReadOnly,
        )
        .unwrap();
    raw.plant_aes_key(&KeyId::random(), "someone-else", false);

    let mut objects = session.inventory().unwrap();
    objects.sort_by_key(|object| (object.label.clone(), format!("{:?}", object.class)));
    assert_eq!(objects.len(), 3, "{objects:#?}");

    let secret = &objects[0];
    assert_eq!(secret.label, "keyrot/inv/v1");
    assert_eq!(secret.key_id(), Some(aes_id));
    assert_eq!(secret.class, ObjectKind::SecretKey);
    assert_eq!(secret.key_type, Some(KeyType::Aes256));
    assert!(
        secret
            .flags
            .matches(ObjectKind::SecretKey, KeyType::Aes256, Usage::Full)
    );
    assert_eq!(secret.sensitive, Some(true));
    assert_eq!(secret.extractable, Some(false));
    assert_eq!(secret.copyable, Some(false));
    assert!(secret.token);
    assert!(secret.private);

    for object in &objects[1..] {
        assert_eq!(object.label, "keyrot/inv/v2");
        assert_eq!(object.key_id(), Some(ec_id));
        assert_eq!(object.key_type, Some(KeyType::EcP256));
        assert!(
            object
                .flags
                .matches(object.class, KeyType::EcP256, Usage::ReadOnly),
            "{object:?}"
        );
        if object.class == ObjectKind::PrivateKey {
            assert!(
                !object
                    .flags
                    .matches(object.class, KeyType::EcP256, Usage::Full)
            );
        }
    }
    let kinds: Vec<ObjectKind> = objects[1..].iter().map(|o| o.class).collect();
    assert!(kinds.contains(&ObjectKind::PrivateKey));
    assert!(kinds.contains(&ObjectKind::PublicKey));
});

/// Records the PKCS#11 function of every trace event and the text of every event.
#[derive(Clone, Default)]
struct EventLog {
    functions: Arc<Mutex<Vec<String>>>,
    texts: Arc<Mutex<Vec<String>>>,
}

struct EventVisitor {
    function: Option<String>,
    text: String,
}

impl Visit for EventVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "function" {
            self.function = Some(value.to_string());
        }
        self.text.push_str(&format!(" {}={value}", field.name()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.text.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for EventLog {
    fn on_event(&self, event: &tracing::Event<'_>, _context: Context<'_, S>) {
        let mut visitor = EventVisitor {
            function: None,
            text: String::new(),
        };
        event.record(&mut visitor);
        if let Some(function) = visitor.function {
            self.functions.lock().unwrap().push(function);
        }
        self.texts.lock().unwrap().push(visitor.text);
    }
}

impl EventLog {
    fn install() -> EventLog {
        let log = EventLog::default();
        let subscriber = tracing_subscriber::registry().with(log.clone());
        tracing::subscriber::set_global_default(subscriber).expect("install the event log");
        log
    }

    fn count(&self, function: &str) -> usize {
        self.functions
            .lock()
            .unwrap()
            .iter()
            .filter(|f| *f == function)
            .count()
    }
}

hsm_test!(rotation_after_inventory_needs_no_search, |env| {
    let log = EventLog::install();
    let hsm = open(env);
    let session = login(&hsm, env);
    let old_id = KeyId::random();
    let old_label = key_label("rotate", 1);
    session
        .generate(KeyType::Aes256, &old_id, &old_label)
        .unwrap();
    session.forget_lookups();

    let searches_before = log.count("C_FindObjects");
    session.inventory().unwrap();
    let new_id = KeyId::random();
    let new_label = key_label("rotate", 2);
    session
        .generate(KeyType::Aes256, &new_id, &new_label)
        .unwrap();
    session
        .self_test(KeyType::Aes256, &new_id, &new_label)
        .unwrap();
    session
        .check_value(KeyType::Aes256, &new_id, &new_label)
        .unwrap();
    session
        .apply_usage(KeyType::Aes256, &old_id, &old_label, Usage::ReadOnly)
        .unwrap();
    assert_eq!(
        log.count("C_FindObjects") - searches_before,
        1,
        "only the inventory searches"
    );

    // Without an inventory, each key version is searched once.
    session.forget_lookups();
    let searches_before = log.count("C_FindObjects");
    session
        .self_test(KeyType::Aes256, &new_id, &new_label)
        .unwrap();
    session
        .apply_usage(KeyType::Aes256, &new_id, &new_label, Usage::Full)
        .unwrap();
    assert_eq!(log.count("C_FindObjects") - searches_before, 1);

    assert!(log.count("C_Login") >= 1);
    for text in log.texts.lock().unwrap().iter() {
        assert!(!text.contains(&env.pin), "PIN in log event: {text}");
    }
});

hsm_test!(wrong_pin_is_login_failure, |env| {
    let hsm = open(env);
    let wrong_pin = "wrong-pin-90817";
    let error = hsm.login(&Pin::new(wrong_pin.to_string())).err().unwrap();
    assert!(
        matches!(&error, HsmError::LoginFailed { rv, .. } if rv == "CKR_PIN_INCORRECT"),
        "{error:?}"
    );
    assert_eq!(error.kind(), HsmErrorKind::Login);
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(wrong_pin), "{text}");
        assert!(!text.contains(&env.pin), "{text}");
    }
    // The right PIN still works after a failed attempt.
    login(&hsm, env);
});

hsm_test!(unknown_token_is_not_found, |env| {
    let error = Hsm::open(&env.module, "no-such-token").unwrap_err();
    assert!(
        matches!(&error, HsmError::TokenNotFound { label } if label == "no-such-token"),
        "{error:?}"
    );
    assert_eq!(error.kind(), HsmErrorKind::Unavailable);
    // The failed open finalised the module, so a later open initialises it again.
    open(env);
});

#[test]
fn missing_module_is_unavailable() {
    let path = std::path::Path::new("/nonexistent/libpkcs11-missing.so");
    let error = Hsm::open(path, "keyrot-test").unwrap_err();
    assert!(
        matches!(&error, HsmError::ModuleUnavailable { path: p, .. } if p == path),
        "{error:?}"
    );
    assert_eq!(error.kind(), HsmErrorKind::Unavailable);
    assert!(
        error
            .to_string()
            .contains("/nonexistent/libpkcs11-missing.so")
    );
}

hsm_test!(audit_key_is_created_once, |env| {
    let hsm = open(env);
    let raw = Raw::open(env);
    let first = {
        let session = login(&hsm, env);
        let error = session.audit_public_key().unwrap_err();
        assert!(
            matches!(error, HsmError::ObjectNotFound { .. }),
            "{error:?}"
        );
        session.ensure_audit_key().unwrap()
    };
    assert_eq!(first.len(), 65);
    assert_eq!(first[0], 0x04);

    let session = login(&hsm, env);
    assert_eq!(session.ensure_audit_key().unwrap(), first);
    assert_eq!(session.audit_public_key().unwrap(), first);

    let handles = raw
        .session
        .find_objects(&[Attribute::Label(AUDIT_KEY_LABEL.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(handles.len(), 2);
    for handle in handles {
        let class = raw.class(handle);
        assert_protected(&raw, handle, class);
        let flags = raw.usage(handle);
        if class == ObjectClass::PRIVATE_KEY {
            assert_eq!(
                flags,
                UsageFlags {
                    sign: true,
                    ..UsageFlags::default()
                }
            );
            let key_type = raw
                .session
                .get_attributes(handle, &[AttributeType::KeyType])
                .unwrap();
            assert_eq!(key_type, vec![Attribute::KeyType(CkKeyType::EC)]);
        } else {
            assert_eq!(
                flags,
                UsageFlags {
                    verify: true,
                    ..UsageFlags::default()
                }
            );
        }
    }
});

hsm_test!(sign_digest_verifies_with_p256, |env| {
    let hsm = open(env);
    let session = login(&hsm, env);
    let point = session.ensure_audit_key().unwrap();
    let digest: [u8; 32] = Sha256::digest(b"audit head").into();
    let signature = session.sign_digest(&digest).unwrap();

    let from_point = VerifyingKey::from_sec1_bytes(&point).unwrap();
    let signature = Signature::from_slice(&signature).unwrap();
    from_point.verify_prehash(&digest, &signature).unwrap();

    let pem = keyrot::pem::public_key_pem(&point).unwrap();
    let from_pem = keyrot::pem::parse_public_key_pem(&pem).unwrap();
    from_pem.verify_prehash(&digest, &signature).unwrap();

    let mut other = digest;
    other[0] ^= 0x01;
    assert!(from_pem.verify_prehash(&other, &signature).is_err());
});
