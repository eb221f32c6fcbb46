//! Turning `cryptoki` errors into custody errors that name the C function, its return value, and
//! what the operator can do.

use cryptoki::{
    context::Function,
    error::{Error as CkError, RvError},
};
use sbtc_custody::{BackendKind, Error, ErrorKind, KeyLabel, Operation};

/// Why a device call failed, before it becomes a custody error.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A raw PKCS#11 failure: the session layer decides whether to recover and retry.
    Ck(CkError),
    /// Already a final custody error.
    Custody(Error),
}

impl From<CkError> for Fail {
    fn from(e: CkError) -> Self {
        Fail::Ck(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Custody(e)
    }
}

/// How the session layer reacts to a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// The session is gone or logged out: reopen, log in, retry once.
    Session,
    /// A cached object handle went stale: find the key again, retry once.
    Handle,
    /// Nothing to recover.
    None,
}

/// A `BackendKind::Pkcs11` error for `op`.
pub(crate) fn error(op: Operation, kind: ErrorKind) -> Error {
    Error::new(BackendKind::Pkcs11, op, kind)
}

pub(crate) fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

pub(crate) fn recovery(e: &CkError) -> Recovery {
    match rv(e) {
        Some(
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent,
        ) => Recovery::Session,
        Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid) => Recovery::Handle,
        _ => Recovery::None,
    }
}

/// `CKR_PIN_INCORRECT` from `RvError::PinIncorrect`.
pub(crate) fn rv_name(rv: &RvError) -> String {
    match rv {
        RvError::VendorDefined(code) => format!("vendor-defined CKR 0x{code:08x}"),
        RvError::UnknownErrorCode(code) => format!("unknown CKR 0x{code:08x}"),
        other => {
            let camel = format!("{other:?}");
            let mut out = String::from("CKR");
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

/// `C_SignInit` from `Function::SignInit`.
pub(crate) fn function_name(f: &Function) -> String {
    format!("C_{f:?}")
}

/// "C_Sign returned CKR_GENERAL_ERROR", or cryptoki's own text for non-PKCS#11 failures.
pub(crate) fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("{} returned {}", function_name(f), rv_name(rv)),
        other => other.to_string(),
    }
}

/// The custody error for a PKCS#11 failure that could not be (or was not) recovered.
pub(crate) fn ck_error(op: Operation, label: Option<&KeyLabel>, e: &CkError) -> Error {
    let (kind, hint) = match rv(e) {
        Some(rv) => classify(rv),
        None => match e {
            CkError::LibraryLoading(_) | CkError::MissingSymbol(_) => (ErrorKind::ModuleLoad, None),
            CkError::NotSupported | CkError::NullFunctionPointer => (
                ErrorKind::Unsupported,
                Some("the PKCS#11 module lacks a function this signer needs; use a newer module"),
            ),
            _ => (ErrorKind::Internal, None),
        },
    };
    let mut err = Error::new(BackendKind::Pkcs11, op, kind).detail(describe(e));
    if let Some(label) = label {
        err = err.label(label);
    }
    if let Some(hint) = hint {
        err = err.hint(hint);
    }
    err
}

fn classify(rv: RvError) -> (ErrorKind, Option<&'static str>) {
    use RvError as R;
    match rv {
        R::PinIncorrect | R::PinInvalid | R::PinLenRange => (ErrorKind::AuthFailed, None),
        R::PinExpired => (
            ErrorKind::AuthFailed,
            Some("the user PIN has expired; set a new one with the token's tools"),
        ),
        R::PinLocked => (ErrorKind::Locked, None),
        R::UserPinNotInitialized => (
            ErrorKind::AuthFailed,
            Some("the token has no user PIN yet; initialise it (pkcs11-tool --init-pin)"),
        ),
        R::SessionHandleInvalid
        | R::SessionClosed
        | R::UserNotLoggedIn
        | R::DeviceRemoved
        | R::TokenNotPresent
        | R::SessionCount => (ErrorKind::SessionLost, None),
        R::TokenNotRecognized | R::SlotIdInvalid => (ErrorKind::TokenNotFound, None),
        R::ObjectHandleInvalid | R::KeyHandleInvalid => (ErrorKind::KeyNotFound, None),
        R::MechanismInvalid
        | R::MechanismParamInvalid
        | R::FunctionNotSupported
        | R::CurveNotSupported
        | R::DomainParamsInvalid
        | R::KeySizeRange => (ErrorKind::Unsupported, None),
        R::KeyTypeInconsistent | R::KeyFunctionNotPermitted => (ErrorKind::WrongKeyKind, None),
        R::EncryptedDataInvalid | R::EncryptedDataLenRange => (ErrorKind::Tampered, None),
        R::TokenWriteProtected => (
            ErrorKind::Device,
            Some("the token is write-protected; make it writable to create or destroy keys"),
        ),
        R::DeviceMemory => (
            ErrorKind::Device,
            Some("the token is out of memory; destroy keys that are no longer used"),
        ),
        R::CryptokiNotInitialized | R::ArgumentsBad | R::TemplateIncomplete => {
            (ErrorKind::Internal, None)
        }
        _ => (ErrorKind::Device, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pkcs11_spelling() {
        assert_eq!(rv_name(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(rv_name(&RvError::GeneralError), "CKR_GENERAL_ERROR");
        assert_eq!(
            rv_name(&RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(function_name(&Function::SignInit), "C_SignInit");
        let e = CkError::Pkcs11(RvError::PinIncorrect, Function::Login);
        assert_eq!(describe(&e), "C_Login returned CKR_PIN_INCORRECT");
    }

    #[test]
    fn operator_facing_kinds() {
        let label = KeyLabel::new("identity").unwrap();
        let cases = [
            (RvError::PinIncorrect, ErrorKind::AuthFailed),
            (RvError::PinLocked, ErrorKind::Locked),
            (RvError::SessionHandleInvalid, ErrorKind::SessionLost),
            (RvError::MechanismInvalid, ErrorKind::Unsupported),
            (RvError::EncryptedDataInvalid, ErrorKind::Tampered),
            (RvError::DeviceError, ErrorKind::Device),
        ];
        for (rv, kind) in cases {
            let err = ck_error(
                Operation::SignSecp256k1,
                Some(&label),
                &CkError::Pkcs11(rv, Function::Sign),
            );
            assert_eq!(err.kind(), kind, "{rv:?}");
            assert_eq!(err.key_label(), Some("identity"));
        }
        assert_eq!(
            recovery(&CkError::Pkcs11(RvError::UserNotLoggedIn, Function::Sign)),
            Recovery::Session
        );
        assert_eq!(
            recovery(&CkError::Pkcs11(
                RvError::ObjectHandleInvalid,
                Function::SignInit
            )),
            Recovery::Handle
        );
        assert_eq!(
            recovery(&CkError::Pkcs11(RvError::GeneralError, Function::Sign)),
            Recovery::None
        );
    }
}
