//! The PKCS#11 layer: loads the module, logs in, and creates, tests, restricts and
//! destroys key versions and the audit checkpoint key. This is the only keyrot module
//! that imports cryptoki; everything it returns is in keyrot's own types.
//!
//! A key version is the set of objects that share one `CKA_ID` and one `CKA_LABEL`: a
//! secret key for AES, a private and a public key for EC and RSA. Every lookup goes by
//! both attributes, and one that finds a missing, doubled or foreign object is an error
//! ([`HsmErrorKind::Inconsistent`]), never a guess.
//!
//! Cost: SoftHSM's `C_FindObjects` scans every object on the token, so it dominates on
//! large tokens. An [`HsmSession`] therefore remembers the handles it found or created
//! and searches the token again only for key versions it has not seen. After
//! [`HsmSession::inventory`] its cache contains every keyrot object, so it does not
//! search again.
//! Every PKCS#11 call is logged at trace level with its duration; the PIN never is.

mod audit_key;
mod error;
mod keys;
mod objects;
mod pin;
mod templates;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use fs2::FileExt;
use tracing::{debug, trace, warn};

pub use error::{HsmError, HsmErrorKind};
pub use keys::GenerateOutcome;
pub use objects::{ObjectInfo, ObjectKind, UsageFlags};
pub use pin::Pin;

use crate::model::KeyId;
use error::{rv_name, rv_of};
use objects::{FOUND_ATTRIBUTES, Found};

/// Runs one PKCS#11 call and logs its name, outcome and duration at trace level.
fn call_raw<T>(
    function: &'static str,
    operation: impl FnOnce() -> cryptoki::error::Result<T>,
) -> cryptoki::error::Result<T> {
    let _serialised = CallLock::acquire();
    let started = Instant::now();
    let result = operation();
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match &result {
        Ok(_) => trace!(function, micros, "PKCS#11 call succeeded"),
        Err(error) => {
            let rv = rv_of(error).map_or_else(|| error.to_string(), rv_name);
            trace!(function, micros, rv, "PKCS#11 call failed");
        }
    }
    result
}

/// File whose `flock` every PKCS#11 call of this process holds, when set.
static CALL_LOCK: OnceLock<File> = OnceLock::new();

/// Makes every later PKCS#11 call of this process hold an exclusive `flock` on
/// `path`, so that calls of several keyrot processes on one token never overlap.
/// Call it before [`Hsm::open`]; a second call keeps the first file.
///
/// NOTE: SoftHSM 2.6.1's file object store is not safe for concurrent writers in
/// several processes: a process reading an object or `token.object` while another
/// writes it gets no token, `CKR_GENERAL_ERROR`, or garbled attribute values. Only
/// the calls are serialised, so runs on different domains still interleave.
pub fn serialise_calls(path: &Path) -> std::io::Result<()> {
    if CALL_LOCK.get().is_some() {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let _ = CALL_LOCK.set(file);
    Ok(())
}

/// Held `flock` of [`CALL_LOCK`]; released on drop.
struct CallLock(Option<&'static File>);

impl CallLock {
    fn acquire() -> CallLock {
        let file = CALL_LOCK.get();
        if let Some(file) = file
            && let Err(error) = file.lock_exclusive()
        {
            warn!(%error, "failed to lock the PKCS#11 call lock; calling unserialised");
            return CallLock(None);
        }
        CallLock(file)
    }
}

impl Drop for CallLock {
    fn drop(&mut self) {
        if let Some(file) = self.0 {
            let _ = FileExt::unlock(file);
        }
    }
}

/// Runs one PKCS#11 call like [`call_raw`] and turns a failure into
/// [`HsmError::Device`].
fn call<T>(
    function: &'static str,
    operation: impl FnOnce() -> cryptoki::error::Result<T>,
) -> Result<T, HsmError> {
    call_raw(function, operation).map_err(|error| HsmError::device(function, error))
}

/// A loaded and initialised PKCS#11 module that calls `C_Finalize` on drop if it was
/// the one that initialised the module in this process.
struct Module {
    context: Option<Pkcs11>,
    path: PathBuf,
    initialized_here: bool,
}

impl Module {
    fn load(path: &Path) -> Result<Module, HsmError> {
        let unavailable = |reason: String| HsmError::ModuleUnavailable {
            path: path.to_path_buf(),
            reason,
        };
        let context = Pkcs11::new(path).map_err(|error| unavailable(error.to_string()))?;
        let init_args = CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK);
        let initialized_here = match call_raw("C_Initialize", || context.initialize(init_args)) {
            Ok(()) => true,
            // Another Hsm of this process initialised the module and still uses it.
            Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
            Err(error) => {
                let rv = rv_of(&error).map_or_else(|| error.to_string(), rv_name);
                return Err(unavailable(format!("C_Initialize failed: {rv}")));
            }
        };
        Ok(Module {
            context: Some(context),
            path: path.to_path_buf(),
            initialized_here,
        })
    }

    fn context(&self) -> &Pkcs11 {
        self.context
            .as_ref()
            .expect("the context is only taken in drop")
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Some(context) = self.context.take()
            && self.initialized_here
            && let Err(error) = call_raw("C_Finalize", || context.finalize())
        {
            debug!(module = %self.path.display(), %error, "C_Finalize failed");
        }
    }
}

/// A PKCS#11 module with the token that keyrot uses, before login.
///
/// `open` calls `C_Initialize`, and dropping the `Hsm` calls `C_Finalize`, because a
/// module keeps its configuration (SoftHSM's `SOFTHSM2_CONF`, for one) from
/// initialisation to finalisation. A second `Hsm` opened while the first is alive
/// shares the first one's initialisation and stops working when the first is dropped,
/// so a process should keep one `Hsm` per module.
pub struct Hsm {
    module: Module,
    slot: Slot,
    token_label: String,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.module.path)
            .field("slot", &self.slot.id())
            .field("token_label", &self.token_label)
            .finish()
    }
}

impl Hsm {
    /// Loads and initialises the module at `module` and finds the slot whose
    /// initialised token has label `token_label`. Touches the HSM (slot and token
    /// information only) and does not log in.
    ///
    /// Errors: `ModuleUnavailable` if the file is missing or fails to load or
    /// initialise, `TokenNotFound` or `AmbiguousToken` if not exactly one token has the
    /// label.
    pub fn open(module: &Path, token_label: &str) -> Result<Hsm, HsmError> {
        let module = Module::load(module)?;
        let context = module.context();
        let slots = call("C_GetSlotList", || {
            context.get_slots_with_initialized_token()
        })?;
        let mut matching = Vec::new();
        for slot in slots {
            let info = call("C_GetTokenInfo", || context.get_token_info(slot))?;
            // PKCS#11 pads labels with spaces to 32 bytes.
            if info.label().trim_end_matches(' ') == token_label {
                matching.push(slot);
            }
        }
        let slot = match matching.as_slice() {
            [] => {
                return Err(HsmError::TokenNotFound {
                    label: token_label.to_string(),
                });
            }
            [slot] => *slot,
            several => {
                return Err(HsmError::AmbiguousToken {
                    label: token_label.to_string(),
                    count: several.len(),
                });
            }
        };
        debug!(module = %module.path.display(), token_label, slot = slot.id(), "opened HSM token");
        Ok(Hsm {
            module,
            slot,
            token_label: token_label.to_string(),
        })
    }

    /// Label of the token this `Hsm` uses.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// Opens a read-write session and logs in as the normal user. Touches the HSM.
    ///
    /// PKCS#11 keeps the login state per process and token, so if another session of
    /// this process is already logged in, the new session shares that login.
    ///
    /// Errors: `LoginFailed` for a rejected PIN (`CKR_PIN_INCORRECT`,
    /// `CKR_PIN_LEN_RANGE`, `CKR_PIN_INVALID`, `CKR_PIN_EXPIRED`,
    /// `CKR_USER_PIN_NOT_INITIALIZED`), `PinLocked`, or `Device`.
    pub fn login(&self, pin: &Pin) -> Result<HsmSession<'_>, HsmError> {
        let context = self.module.context();
        let session = call("C_OpenSession", || context.open_rw_session(self.slot))?;
        let login = call_raw("C_Login", || {
            session.login(UserType::User, Some(pin.secret()))
        });
        if let Err(error) = login {
            match rv_of(&error) {
                Some(RvError::UserAlreadyLoggedIn) => {}
                Some(
                    rv @ (RvError::PinIncorrect
                    | RvError::PinInvalid
                    | RvError::PinLenRange
                    | RvError::PinExpired
                    | RvError::UserPinNotInitialized),
                ) => {
                    return Err(HsmError::LoginFailed {
                        token: self.token_label.clone(),
                        rv: rv_name(rv),
                    });
                }
                Some(RvError::PinLocked) => {
                    return Err(HsmError::PinLocked {
                        token: self.token_label.clone(),
                    });
                }
                _ => return Err(HsmError::device("C_Login", error)),
            }
        }
        debug!(token_label = %self.token_label, "logged in to HSM token");
        Ok(HsmSession {
            session,
            lookups: RefCell::new(Lookups::default()),
            _hsm: std::marker::PhantomData,
        })
    }
}

/// Handles this session found or created, so that later operations on the same key
/// version need no new `C_FindObjects`.
#[derive(Default)]
struct Lookups {
    /// Objects of each key version this session looked up, inventoried or generated.
    keys: HashMap<(KeyId, String), Vec<Found>>,
    /// Label prefix under which `keys` and `others` contain every object because an
    /// inventory of that prefix ran. A key version under it missing from `keys` has no
    /// objects.
    complete: Option<String>,
    /// Objects an inventory listed whose `CKA_ID` is not a 16-byte keyrot id, by label.
    others: Vec<(String, ObjectHandle)>,
    /// The audit checkpoint key, once looked up.
    audit: Option<audit_key::AuditKey>,
}

/// A logged-in read-write session on the token. Dropping it closes the session.
///
/// Each method documents what it reads or changes on the token. Lookups are cached for
/// the session's lifetime: an object that another process creates under a key version
/// this session has already seen stays unseen until [`HsmSession::forget_lookups`] or
/// [`HsmSession::inventory`]. A cached handle whose object another process destroyed
/// is noticed (`CKR_OBJECT_HANDLE_INVALID`) and the lookup is repeated once.
pub struct HsmSession<'hsm> {
    session: Session,
    lookups: RefCell<Lookups>,
    // Ties the session to its Hsm, which must not finalise the module before the
    // session closes.
    _hsm: std::marker::PhantomData<&'hsm Hsm>,
}

impl HsmSession<'_> {
    /// Drops every cached lookup, so the next operation on any key version searches
    /// the token again. Does not touch the HSM.
    pub fn forget_lookups(&self) {
        *self.lookups.borrow_mut() = Lookups::default();
    }

    /// Searches the token for the objects with this `CKA_ID` and label (one
    /// `C_FindObjects`) and reads their class, key type and protection attributes.
    fn find_key(&self, id: &KeyId, label: &str) -> Result<Vec<Found>, HsmError> {
        let template = [
            Attribute::Id(id.0.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let handles = call("C_FindObjects", || self.session.find_objects(&template))?;
        self.describe(&handles)
    }

    /// Reads [`FOUND_ATTRIBUTES`] of each handle.
    fn describe(&self, handles: &[ObjectHandle]) -> Result<Vec<Found>, HsmError> {
        handles
            .iter()
            .map(|handle| {
                let attributes = call("C_GetAttributeValue", || {
                    self.session.get_attributes(*handle, &FOUND_ATTRIBUTES)
                })?;
                Ok(Found::from_attributes(*handle, &attributes))
            })
            .collect()
    }

    /// Returns the cached objects of a key version, or `None` if this session has not
    /// looked it up.
    fn cached(&self, id: &KeyId, label: &str) -> Option<Vec<Found>> {
        let lookups = self.lookups.borrow();
        match lookups.keys.get(&(*id, label.to_string())) {
            Some(found) => Some(found.clone()),
            None if lookups
                .complete
                .as_deref()
                .is_some_and(|prefix| label.starts_with(prefix)) =>
            {
                Some(Vec::new())
            }
            None => None,
        }
    }

    fn remember(&self, id: &KeyId, label: &str, found: Vec<Found>) {
        self.lookups
            .borrow_mut()
            .keys
            .insert((*id, label.to_string()), found);
    }

    fn forget(&self, id: &KeyId, label: &str) {
        let mut lookups = self.lookups.borrow_mut();
        lookups.keys.remove(&(*id, label.to_string()));
        // Without the entry, `complete` would report the key version as absent.
        lookups.complete = None;
    }

    /// Returns the objects of a key version from the cache, or else from one search.
    fn lookup(&self, id: &KeyId, label: &str) -> Result<Vec<Found>, HsmError> {
        if let Some(found) = self.cached(id, label) {
            return Ok(found);
        }
        let found = self.find_key(id, label)?;
        self.remember(id, label, found.clone());
        Ok(found)
    }

    /// Runs `operation` on the objects of a key version. If the operation used cached
    /// handles and one of them no longer names an object, searches the token and runs
    /// the operation once more, so `operation` must be idempotent.
    fn with_key<T>(
        &self,
        id: &KeyId,
        label: &str,
        operation: impl Fn(&[Found]) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        if let Some(found) = self.cached(id, label) {
            match operation(&found) {
                Err(error) if error.is_stale_handle() => {
                    debug!(label, id = %id, %error, "cached object handle is stale, searching again");
                    self.forget(id, label);
                }
                result => return result,
            }
        }
        let found = self.find_key(id, label)?;
        self.remember(id, label, found.clone());
        operation(&found)
    }
}
