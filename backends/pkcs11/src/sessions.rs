//! A pool of logged-in sessions on one token, with recovery after session loss, and the per-label
//! cache of key handles and public keys.
//!
//! `cryptoki::Session` is `Send` but not `Sync`: a session serves one call at a time. Each device
//! call takes a session from the pool, or opens one if none is idle; the `BlockingPool` in front of
//! this bounds how many run at once, so at most `sessions` sessions are ever open.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, RwLock,
    },
};

use cryptoki::{
    context::Pkcs11,
    error::{Error as CkError, RvError},
    session::{Session, SessionState, UserType},
    slot::Slot,
    types::AuthPin,
};
use sbtc_custody::{Error, ErrorKind, KeyLabel, Operation, SecretSource, SecretString};

use crate::{
    errors::{ck_error, describe, recovery, rv, Fail, Recovery},
    keys::{self, ResolvedKey},
    token::{find_slot, TokenSelector},
};

struct Pooled {
    session: Session,
    /// Sessions from before the last recovery are presumed dead and never reused.
    generation: u64,
}

pub(crate) struct TokenSessions {
    pub ctx: Arc<Pkcs11>,
    pub module: PathBuf,
    pub selector: TokenSelector,
    slot: Mutex<Slot>,
    pin: SecretString,
    pin_source: SecretSource,
    idle: Mutex<Vec<Pooled>>,
    generation: AtomicU64,
    keys: RwLock<HashMap<KeyLabel, Arc<ResolvedKey>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind, still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TokenSessions {
    /// Opens and logs in the first session, so that a wrong PIN or a missing token shows at start.
    pub fn open(
        ctx: Arc<Pkcs11>,
        module: PathBuf,
        selector: TokenSelector,
        slot: Slot,
        pin: SecretString,
        pin_source: SecretSource,
    ) -> Result<Self, Error> {
        let sessions = TokenSessions {
            ctx,
            module,
            selector,
            slot: Mutex::new(slot),
            pin,
            pin_source,
            idle: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            keys: RwLock::new(HashMap::new()),
        };
        let first = sessions.open_session(Operation::Open, 0)?;
        sessions.put_back(first);
        Ok(sessions)
    }

    pub fn slot(&self) -> Slot {
        *lock(&self.slot)
    }

    /// Runs `f` on a logged-in session. If the session was lost (closed, logged out, device
    /// removed) it is reopened, logged in and `f` runs once more; likewise when a cached key handle
    /// went stale.
    pub fn run<T>(
        &self,
        op: Operation,
        label: Option<&KeyLabel>,
        mut f: impl FnMut(&Session) -> Result<T, Fail>,
    ) -> Result<T, Error> {
        let mut retried = false;
        let mut next = None;
        loop {
            let pooled = match next.take() {
                Some(p) => p,
                None => self.take_session(op)?,
            };
            let e = match f(&pooled.session) {
                Ok(v) => {
                    self.put_back(pooled);
                    return Ok(v);
                }
                Err(Fail::Custody(e)) => {
                    self.put_back(pooled);
                    return Err(e);
                }
                Err(Fail::Ck(e)) => e,
            };
            match recovery(&e) {
                Recovery::Session if !retried => {
                    retried = true;
                    tracing::warn!(
                        backend = "pkcs11",
                        operation = %op,
                        "{}; reopening the session and logging in again",
                        describe(&e)
                    );
                    next = self.recover(pooled, &e);
                }
                Recovery::Handle if !retried => {
                    retried = true;
                    match label {
                        Some(l) => self.forget(l),
                        None => self.forget_all(),
                    }
                    // A logout elsewhere in the process hides private objects, and SoftHSM2 then
                    // answers CKR_OBJECT_HANDLE_INVALID rather than CKR_USER_NOT_LOGGED_IN.
                    self.ensure_logged_in(&pooled.session);
                    next = Some(pooled);
                }
                Recovery::Session => {
                    // Still lost after a fresh session: leave it out of the pool.
                    drop(pooled);
                    return Err(ck_error(op, label, &e).hint(
                        "the token keeps dropping sessions; check the device, its connection and \
                         its logs (the signer retries on the next call)",
                    ));
                }
                Recovery::Handle | Recovery::None => {
                    self.put_back(pooled);
                    return Err(ck_error(op, label, &e));
                }
            }
        }
    }

    /// The cached key under `label`, found and checked on first use.
    pub fn key(
        &self,
        session: &Session,
        op: Operation,
        label: &KeyLabel,
    ) -> Result<Arc<ResolvedKey>, Fail> {
        if let Some(k) = self.read_keys().get(label) {
            return Ok(Arc::clone(k));
        }
        let key = Arc::new(keys::resolve(session, op, label)?);
        self.remember(label, Arc::clone(&key));
        Ok(key)
    }

    pub fn remember(&self, label: &KeyLabel, key: Arc<ResolvedKey>) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.clone(), key);
    }

    pub fn forget(&self, label: &KeyLabel) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(label);
    }

    fn forget_all(&self) {
        self.keys.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, HashMap<KeyLabel, Arc<ResolvedKey>>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn take_session(&self, op: Operation) -> Result<Pooled, Error> {
        let generation = self.generation.load(Ordering::Acquire);
        {
            let mut idle = lock(&self.idle);
            while let Some(p) = idle.pop() {
                if p.generation == generation {
                    return Ok(p);
                }
            }
        }
        self.open_session(op, generation)
    }

    fn put_back(&self, pooled: Pooled) {
        if pooled.generation == self.generation.load(Ordering::Acquire) {
            lock(&self.idle).push(pooled);
        }
        // Otherwise it predates a recovery: drop it without C_CloseSession (sessions are opened
        // "no drop"), since its handle may already belong to a new session on some modules.
    }

    /// After a lost session: log in again if the session merely lost its login; otherwise retire
    /// every pooled session of this generation so the retry opens a fresh one.
    fn recover(&self, pooled: Pooled, e: &CkError) -> Option<Pooled> {
        // Handles may change across a re-login or a reconnect: find keys again.
        self.forget_all();
        if rv(e) == Some(RvError::UserNotLoggedIn) && self.login(&pooled.session).is_ok() {
            return Some(pooled);
        }
        let generation = pooled.generation;
        drop(pooled);
        if self
            .generation
            .compare_exchange(
                generation,
                generation + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            lock(&self.idle).clear();
        }
        None
    }

    fn open_session(&self, op: Operation, generation: u64) -> Result<Pooled, Error> {
        let slot = self.slot();
        let session = match self.ctx.open_rw_session_no_drop(slot) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    rv(&e),
                    Some(
                        RvError::TokenNotPresent | RvError::DeviceRemoved | RvError::SlotIdInvalid
                    )
                ) =>
            {
                // The token may have come back in another slot.
                let found = find_slot(&self.ctx, &self.module, &self.selector, op)?;
                *lock(&self.slot) = found;
                self.ctx
                    .open_rw_session_no_drop(found)
                    .map_err(|e| ck_error(op, None, &e))?
            }
            Err(e) => return Err(ck_error(op, None, &e)),
        };
        if let Err(e) = self.login(&session) {
            let _ = session.close();
            return Err(self.login_error(&e));
        }
        Ok(Pooled {
            session,
            generation,
        })
    }

    /// Logs in again if the session's token lost its login; failures surface on the retry.
    fn ensure_logged_in(&self, session: &Session) {
        let logged_in = session.get_session_info().is_ok_and(|i| {
            matches!(
                i.session_state(),
                SessionState::RwUser | SessionState::RoUser
            )
        });
        if !logged_in {
            self.forget_all();
            let _ = self.login(session);
        }
    }

    /// C_Login as the user. Login state is shared by all sessions of this process on the token, so
    /// "already logged in" is success.
    fn login(&self, session: &Session) -> Result<(), CkError> {
        let pin = AuthPin::from(self.pin.expose().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn login_error(&self, e: &CkError) -> Error {
        let err = ck_error(Operation::Login, None, e);
        let hint = match err.kind() {
            ErrorKind::AuthFailed => format!(
                "check the user PIN in the {} for the token with {}; each wrong try counts towards \
                 locking it",
                self.pin_source,
                self.selector.describe()
            ),
            ErrorKind::Locked => {
                "the user PIN is locked; have the security officer unlock or reset it".to_owned()
            }
            _ => return err,
        };
        err.hint(hint)
    }
}

impl Drop for TokenSessions {
    fn drop(&mut self) {
        let generation = self.generation.load(Ordering::Acquire);
        for p in lock(&self.idle).drain(..) {
            if p.generation == generation {
                // Failure here means the session is gone already; nothing to do.
                let _ = p.session.close();
            }
        }
    }
}
