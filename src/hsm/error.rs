//! Errors of the HSM layer and their classification for exit codes.
//!
//! PKCS#11 return values are kept as their `CKR_*` names (unknown and vendor codes as
//! hex numbers) so that logs and messages use the names of the PKCS#11 specification.

use std::path::PathBuf;

use cryptoki::error::{Error as CryptokiError, RvError};

use super::objects::ObjectKind;

/// Failure of an HSM operation, naming the object, token or PKCS#11 function involved.
///
/// No variant carries a PIN or key material.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The PKCS#11 module file is missing, cannot be loaded, or `C_Initialize` failed.
    #[error("PKCS#11 module {path} is unavailable: {reason}")]
    ModuleUnavailable { path: PathBuf, reason: String },

    /// No slot contains an initialised token with this label.
    #[error("no initialised token with label {label:?} was found")]
    TokenNotFound { label: String },

    /// Several slots hold an initialised token with this label, so keyrot cannot tell
    /// which one is meant.
    #[error("{count} initialised tokens have label {label:?}, expected one")]
    AmbiguousToken { label: String, count: usize },

    /// `C_Login` rejected the user PIN (incorrect, wrong length, expired or never set).
    #[error("login to token {token:?} failed: {rv}; check the configured user PIN")]
    LoginFailed { token: String, rv: String },

    /// The token has locked the user PIN after too many failed logins.
    #[error("the user PIN of token {token:?} is locked; the security officer must reset it")]
    PinLocked { token: String },

    /// No object of this class has this label and `CKA_ID`.
    #[error("{class} with label {label:?} and CKA_ID {id} not found")]
    ObjectNotFound {
        label: String,
        id: String,
        class: ObjectKind,
    },

    /// Several objects of this class have this label and `CKA_ID`.
    #[error(
        "{count} objects of class {class} with label {label:?} and CKA_ID {id} found, expected one"
    )]
    DuplicateObjects {
        label: String,
        id: String,
        class: ObjectKind,
        count: usize,
    },

    /// An object with this label and `CKA_ID` has a class, key type or protection
    /// attribute that keyrot never creates.
    #[error("{class} with label {label:?} and CKA_ID {id} is not a keyrot key: {reason}")]
    UnexpectedObject {
        label: String,
        id: String,
        class: ObjectKind,
        reason: String,
    },

    /// The encrypt/decrypt or sign/verify round trip with the key failed.
    #[error("self-test of key {label:?} failed: {reason}")]
    SelfTestFailed { label: String, reason: String },

    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {function} failed: {rv}")]
    Device { function: String, rv: String },
}

/// Coarse class of an [`HsmError`], enough to choose an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsmErrorKind {
    /// The module, slot or token cannot be reached or failed; a rerun may succeed.
    Unavailable,
    /// The token rejected the login; a rerun with the same PIN will fail again.
    Login,
    /// The objects on the token contradict what keyrot expects; a person must look.
    Inconsistent,
}

impl HsmError {
    /// Classifies the error for the exit-code mapping.
    pub fn kind(&self) -> HsmErrorKind {
        match self {
            HsmError::ModuleUnavailable { .. }
            | HsmError::TokenNotFound { .. }
            | HsmError::Device { .. } => HsmErrorKind::Unavailable,
            HsmError::LoginFailed { .. } | HsmError::PinLocked { .. } => HsmErrorKind::Login,
            HsmError::AmbiguousToken { .. }
            | HsmError::ObjectNotFound { .. }
            | HsmError::DuplicateObjects { .. }
            | HsmError::UnexpectedObject { .. }
            | HsmError::SelfTestFailed { .. } => HsmErrorKind::Inconsistent,
        }
    }

    /// Builds a [`HsmError::Device`] from a cryptoki error of the PKCS#11 function
    /// `function` (for example `"C_Sign"`).
    pub(super) fn device(function: &str, error: CryptokiError) -> HsmError {
        let rv = match &error {
            CryptokiError::Pkcs11(rv, _) => rv_name(*rv),
            other => other.to_string(),
        };
        HsmError::Device {
            function: function.to_string(),
            rv,
        }
    }

    /// Reports whether a PKCS#11 call rejected an object handle as invalid. That
    /// happens when another process destroyed the object after this session found it.
    pub(super) fn is_stale_handle(&self) -> bool {
        match self {
            HsmError::Device { rv, .. } => {
                rv == &rv_name(RvError::ObjectHandleInvalid)
                    || rv == &rv_name(RvError::KeyHandleInvalid)
            }
            _ => false,
        }
    }
}

/// Returns the `CKR_*` name of a PKCS#11 return value, or its number in hex when
/// cryptoki does not know it.
pub(super) fn rv_name(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(code) => format!("CKR_VENDOR_DEFINED ({code:#x})"),
        RvError::UnknownErrorCode(code) => format!("unknown return value {code:#x}"),
        known => {
            // cryptoki names each variant after its CKR_ constant in CamelCase, for
            // example PinIncorrect for CKR_PIN_INCORRECT.
            let camel = format!("{known:?}");
            let mut name = String::from("CKR");
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

/// Returns the return value of a failed PKCS#11 call, if the error is one.
pub(super) fn rv_of(error: &CryptokiError) -> Option<RvError> {
    match error {
        CryptokiError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rv_name_uses_ckr_constant_names() {
        assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(rv_name(RvError::ArgumentsBad), "CKR_ARGUMENTS_BAD");
        assert_eq!(rv_name(RvError::KeyHandleInvalid), "CKR_KEY_HANDLE_INVALID");
        assert_eq!(
            rv_name(RvError::UnknownErrorCode(0x1234)),
            "unknown return value 0x1234"
        );
        assert_eq!(
            rv_name(RvError::VendorDefined(0x8000_0001)),
            "CKR_VENDOR_DEFINED (0x80000001)"
        );
    }
}
