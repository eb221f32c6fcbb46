//! Loading and initialising PKCS#11 modules, once per process.
//!
//! `C_Initialize` may be called once per process; a second call fails, and SoftHSM2 crashes when
//! two threads initialise it at once. So every user of a module in this process (backends, tests,
//! benchmarks doing raw `cryptoki` calls) goes through [`load_module`] and shares one context.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    error::{Error as CkError, Rv, RvError},
    slot::Slot,
};
use sbtc_custody::{BackendKind, Error, ErrorKind, Operation};

use crate::errors::{describe, rv_name};

type Registry = Mutex<HashMap<PathBuf, Arc<Pkcs11>>>;

fn registry() -> &'static Registry {
    static MODULES: OnceLock<Registry> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The process-wide, initialised context for the PKCS#11 module at `path`.
///
/// The first call loads the library and calls `C_Initialize` (with `CKF_OS_LOCKING_OK`, so the
/// module may be used from many threads); later calls return the same context. The module is
/// never finalised: it lives as long as the process.
pub fn load_module(path: &Path) -> Result<Arc<Pkcs11>, Error> {
    // Two spellings of one library must share one context: dlopen hands back the same instance.
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut modules = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = modules.get(&key) {
        return Ok(Arc::clone(ctx));
    }
    let fail = |detail: String| {
        Error::new(BackendKind::Pkcs11, Operation::Open, ErrorKind::ModuleLoad).detail(detail)
    };
    if !path.is_file() {
        return Err(fail(format!(
            "no PKCS#11 module at {}: the file does not exist",
            path.display()
        )));
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        fail(format!(
            "cannot load the PKCS#11 module {}: {e}",
            path.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone in this process initialised it outside this registry; the module is usable.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(fail(format!(
                "the PKCS#11 module {} failed to initialise: {}",
                path.display(),
                describe(&e)
            )))
        }
    }
    let ctx = Arc::new(ctx);
    modules.insert(key, Arc::clone(&ctx));
    Ok(ctx)
}

/// Closes every session this process has on `slot` (`C_CloseAllSessions`), logging the token out.
///
/// Only for tests that simulate a lost device connection; a signer never needs it. `cryptoki` 0.12
/// has no wrapper for this function, so it is called through the module's own function list (the
/// same library instance that [`load_module`] initialised).
#[doc(hidden)]
pub fn close_all_sessions(module: &Path, slot: Slot) -> Result<(), Error> {
    load_module(module)?;
    let fail = |detail: String| {
        Error::new(BackendKind::Pkcs11, Operation::Health, ErrorKind::Device).detail(detail)
    };
    // SAFETY: loading a PKCS#11 library runs no code beyond its initialisers, which ran already
    // when load_module opened it; dlopen returns the same instance with a higher reference count.
    let lib = unsafe { cryptoki_sys::Pkcs11::new(module) }
        .map_err(|e| fail(format!("cannot open {}: {e}", module.display())))?;
    let get_list = lib.C_GetFunctionList.as_ref().map_err(|e| {
        fail(format!(
            "{} has no C_GetFunctionList: {e}",
            module.display()
        ))
    })?;
    let mut list: *mut cryptoki_sys::CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: C_GetFunctionList writes a pointer to the module's static function table.
    let rv = unsafe { get_list(&mut list) };
    if rv != cryptoki_sys::CKR_OK || list.is_null() {
        return Err(fail(format!("C_GetFunctionList returned 0x{rv:x}")));
    }
    // SAFETY: `list` points to the module's function table, valid while the library is loaded.
    let close = unsafe { (*list).C_CloseAllSessions }
        .ok_or_else(|| fail("the module has no C_CloseAllSessions".to_owned()))?;
    // SAFETY: a plain call with a slot id; the module checks the id.
    let rv = unsafe { close(slot.into()) };
    if let Rv::Error(e) = Rv::from(rv) {
        return Err(fail(format!("C_CloseAllSessions returned {}", rv_name(&e))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_module_names_its_path() {
        let err = load_module(Path::new("/nonexistent/libvendor-pkcs11.so")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ModuleLoad);
        assert!(
            err.to_string().contains("/nonexistent/libvendor-pkcs11.so"),
            "{err}"
        );
    }

    #[test]
    fn a_library_that_is_not_pkcs11_is_a_module_load_error() {
        // Any shared library without C_GetFunctionList will do.
        let libc = [
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/usr/lib/x86_64-linux-gnu/libm.so.6",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file());
        let Some(libm) = libc else {
            eprintln!("no libm found; skipping");
            return;
        };
        let err = load_module(libm).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ModuleLoad);
        assert!(err.to_string().contains("libm.so.6"), "{err}");
    }
}
