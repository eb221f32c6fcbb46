//! A pool of logged-in sessions on one token, with recovery after session loss, and the per-label
//! cache of key handles and public keys.
//!
//! Logging in again after a lost session uses the PIN read at start. If the token refuses that PIN
//! (it was changed under the running signer, say), the refusal is kept: C_Login is never called
//! again by this backend, and every later call fails at once, since each wrong try counts towards
//! locking the token. Logins are serialised, so concurrent recoveries make one try, not one each.
//!
//! `cryptoki::Session` is `Send` but not `Sync`: a session serves one call at a time. Each device
//! call takes a session from the pool, or opens one if none is idle; the `BlockingPool` in front of
//! this bounds how many run at once, so at most `sessions` sessions are ever open.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, RwLock,
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
    /// `allow_imported_keys` from the config.
    allow_imported_keys: bool,
    /// Held around every C_Login, so that a refused PIN is seen by the next would-be login.
    login_lock: Mutex<()>,
    /// Set once the token refused the PIN: the error every later call returns.
    pin_refused: OnceLock<Error>,
    /// C_Login calls made (tests prove with it that a refused PIN is not tried again).
    login_attempts: AtomicU64,
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
        allow_imported_keys: bool,
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
            allow_imported_keys,
            login_lock: Mutex::new(()),
            pin_refused: OnceLock::new(),
            login_attempts: AtomicU64::new(0),
        };
        let first = sessions.open_session(Operation::Open, 0)?;
        sessions.put_back(first);
        Ok(sessions)
    }

    pub fn slot(&self) -> Slot {
        *lock(&self.slot)
    }

    /// How many times this backend called C_Login.
    pub fn login_attempts(&self) -> u64 {
        self.login_attempts.load(Ordering::Acquire)
    }

    /// The refusal to return, for the operation at hand, once the token refused the PIN.
    fn refused(&self, op: Operation) -> Option<Error> {
        self.pin_refused.get().map(|e| e.clone().into_operation(op))
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
        if let Some(e) = self.refused(op) {
            return Err(e);
        }
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
                    if let Some(refused) = self.refused(op) {
                        return Err(refused);
                    }
                    return Err(ck_error(op, label, &e).hint(
                        "the token keeps dropping sessions; check the device, its connection and \
                         its logs (the signer retries on the next call)",
                    ));
                }
                Recovery::Handle | Recovery::None => {
                    self.put_back(pooled);
                    // A login refused during the recovery explains the failure better.
                    return Err(self.refused(op).unwrap_or_else(|| ck_error(op, label, &e)));
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
        let key = Arc::new(keys::resolve(session, op, label, self.allow_imported_keys)?);
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
            return Err(match e {
                LoginError::Refused(e) => e.into_operation(op),
                LoginError::Ck(e) => self.login_error(&e),
            });
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
    /// "already logged in" is success. Once the token refused the PIN this never calls C_Login
    /// again; the first refusal is kept and returned instead.
    fn login(&self, session: &Session) -> Result<(), LoginError> {
        let _one_at_a_time = lock(&self.login_lock);
        if let Some(e) = self.pin_refused.get() {
            return Err(LoginError::Refused(e.clone()));
        }
        self.login_attempts.fetch_add(1, Ordering::AcqRel);
        let pin = AuthPin::from(self.pin.expose().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) if refuses_pin(&e) => {
                let refusal = self.refusal(&e);
                tracing::error!(
                    backend = "pkcs11",
                    token = %self.selector.describe(),
                    "{}; not logging in again until restarted",
                    describe(&e)
                );
                Err(LoginError::Refused(
                    self.pin_refused.get_or_init(|| refusal).clone(),
                ))
            }
            Err(e) => Err(LoginError::Ck(e)),
        }
    }

    /// The error every call returns after the token refused the PIN.
    fn refusal(&self, e: &CkError) -> Error {
        let base = ck_error(Operation::Login, None, e);
        let locked = base.kind() == ErrorKind::Locked;
        base.detail(format!(
            "the token with {} refused the PIN ({}); the signer will not log in again with it, so \
             that repeated wrong tries cannot lock the token",
            self.selector.describe(),
            describe(e)
        ))
        .hint(if locked {
            "the user PIN is locked; have the security officer unlock or reset it, then restart \
             the signer"
                .to_owned()
        } else {
            format!(
                "fix the PIN source ({}): put the token's current user PIN there, and restart the \
                 signer",
                self.pin_source
            )
        })
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

/// Why C_Login did not log in.
#[derive(Debug)]
enum LoginError {
    /// The token refused the PIN, now or before: do not try again.
    Refused(Error),
    /// Any other failure (session gone, device error): the usual recovery applies.
    Ck(CkError),
}

trait IntoOperation {
    fn into_operation(self, op: Operation) -> Error;
}

impl IntoOperation for Error {
    /// The same error, reported for the operation of the call at hand.
    fn into_operation(self, op: Operation) -> Error {
        let mut out = Error::new(self.backend(), op, self.kind())
            .detail(self.detail_text())
            .hint(self.next_step());
        if let Some(label) = self.key_label() {
            out = out.label(label);
        }
        out
    }
}

/// Return values of C_Login that say the PIN itself is wrong, expired or locked: trying the same
/// PIN again cannot succeed and may lock the token.
fn refuses_pin(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(
            RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinExpired
                | RvError::PinLocked
        )
    )
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
