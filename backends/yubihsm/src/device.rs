//! The one authenticated session with the device: connect, classify errors, reconnect and retry.
//!
//! A YubiHSM2 holds at most 16 sessions and closes one after 30 s without traffic. Signers that
//! opened a session per request, or a new client on every error, ran out of sessions in the field.
//! Here one `yubihsm::Client` lives as long as the backend. The crate reopens its session by itself
//! after an idle timeout or a broken link; when the device rejects the session (after a device
//! restart, say) we replace the client, re-authenticate and retry the call once.
//!
//! yubihsm 0.42 offers no public way to close a client's session (`Session::close` needs the
//! session by value and the client only lends it), so a replaced or dropped client leaves its
//! session on the device until the 30 s idle timeout. Replacements are spaced at least
//! [`MIN_RECONNECT_INTERVAL`] apart so that a flapping link cannot fill the device's 16 slots.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use sbtc_custody::{BackendKind, Error, ErrorKind, KeyLabel, Operation, Result};
use yubihsm::{
    authentication::Credentials, client::ErrorKind as ClientErrorKind, device, Algorithm, Client,
    Connector,
};

pub(crate) const BACKEND: BackendKind = BackendKind::YubiHsm;

/// At most one new session per this interval: even if every abandoned session lingered for the
/// device's 30 s idle timeout, fewer than its 16 slots fill up.
pub(crate) const MIN_RECONNECT_INTERVAL: Duration = Duration::from_secs(2);

/// What the device said about itself when the session was opened.
#[derive(Clone, Debug)]
pub(crate) struct DeviceSummary {
    pub serial: String,
    pub version: String,
    pub algorithms: Vec<Algorithm>,
}

/// Why a device call failed, as far as retrying is concerned.
pub(crate) enum Fail {
    /// The session or the link broke: open a new session and run the call again.
    Session(yubihsm::client::Error),
    /// A cached key entry may be out of date (the object is gone or was replaced): look the label
    /// up again on the device and retry; the error is what to report if that does not help.
    Stale(Error),
    /// Final.
    Final(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Final(e)
    }
}

struct State {
    client: Option<Client>,
    last_connect: Option<Instant>,
}

/// The device link: one client, one session.
pub(crate) struct Device {
    connector: Connector,
    credentials: Credentials,
    endpoint: String,
    expected_serial: Option<String>,
    state: Mutex<State>,
    // Apart from `state`, which is held across (slow) reconnects: async callers read this.
    summary: Mutex<Option<DeviceSummary>>,
}

impl Device {
    /// Opens the session now, so that a wrong password or an absent device shows at start.
    pub(crate) fn open(
        connector: Connector,
        credentials: Credentials,
        endpoint: String,
        expected_serial: Option<String>,
    ) -> Result<Device> {
        let device = Device {
            connector,
            credentials,
            endpoint,
            expected_serial,
            state: Mutex::new(State {
                client: None,
                last_connect: None,
            }),
            summary: Mutex::new(None),
        };
        device.connect(&mut device.lock(), Operation::Open)?;
        Ok(device)
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn auth_key_id(&self) -> u16 {
        self.credentials.authentication_key_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock can only come from inside the yubihsm crate; the state
        // it guards stays consistent (at worst a client that the next error replaces).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn summary(&self) -> Option<DeviceSummary> {
        self.summary
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn connect(&self, state: &mut State, op: Operation) -> Result<Client> {
        if let Some(last) = state.last_connect {
            let since = last.elapsed();
            if since < MIN_RECONNECT_INTERVAL {
                std::thread::sleep(MIN_RECONNECT_INTERVAL - since);
            }
        }
        state.last_connect = Some(Instant::now());
        // Dropping the old client first: it must not be used again whatever happens next.
        state.client = None;
        let client = Client::open(self.connector.clone(), self.credentials.clone(), true)
            .map_err(|e| self.connect_error(op, e))?;
        let info = client.device_info().map_err(|e| {
            self.final_error(op, None, e)
                .detail(format!("cannot read device info from {}", self.endpoint))
        })?;
        let serial = info.serial_number.to_string();
        if let Some(expected) = &self.expected_serial {
            if *expected != serial {
                return Err(Error::new(BACKEND, op, ErrorKind::TokenNotFound)
                    .detail(format!(
                        "{} reaches the YubiHSM2 with serial {serial}, but the config asks for {expected}",
                        self.endpoint
                    ))
                    .hint("fix `serial` in [custody.yubihsm] or connect the right device"));
            }
        }
        *self.summary.lock().unwrap_or_else(|p| p.into_inner()) = Some(DeviceSummary {
            serial,
            version: format!(
                "{}.{}.{}",
                info.major_version, info.minor_version, info.build_version
            ),
            algorithms: info.algorithms,
        });
        state.client = Some(client.clone());
        tracing::debug!(backend = %BACKEND, endpoint = %self.endpoint, "YubiHSM2 session opened");
        Ok(client)
    }

    /// The client, and whether it was connected just now (after an earlier reconnect failed).
    fn current(&self, op: Operation) -> Result<(Client, bool)> {
        let mut state = self.lock();
        match &state.client {
            Some(c) => Ok((c.clone(), false)),
            None => Ok((self.connect(&mut state, op)?, true)),
        }
    }

    /// Runs `f` with the session; on a broken session reconnects and runs it once more.
    /// `on_reconnect` runs whenever a new client was connected (the device behind it may have
    /// changed). `f` may be called twice, so it must tolerate a first attempt that half happened.
    pub(crate) fn run<T>(
        &self,
        op: Operation,
        label: Option<&KeyLabel>,
        on_reconnect: impl Fn(),
        mut f: impl FnMut(&Client) -> Result<T, Fail>,
    ) -> Result<T> {
        let (client, fresh) = self.current(op).map_err(|e| with_label(e, label))?;
        if fresh {
            on_reconnect();
        }
        let first = match f(&client) {
            Ok(v) => return Ok(v),
            Err(Fail::Final(e) | Fail::Stale(e)) => return Err(e),
            Err(Fail::Session(e)) => e,
        };
        tracing::warn!(
            backend = %BACKEND, %op, endpoint = %self.endpoint, error = %first,
            "YubiHSM2 session broke; reconnecting"
        );
        let client = self
            .connect(&mut self.lock(), op)
            .map_err(|e| with_label(e, label))?;
        on_reconnect();
        match f(&client) {
            Ok(v) => Ok(v),
            Err(Fail::Final(e) | Fail::Stale(e)) => Err(e),
            Err(Fail::Session(e)) => Err(self.lost(op, label, &e)),
        }
    }

    /// Sorts a client error into retry / final.
    pub(crate) fn classify(
        &self,
        op: Operation,
        label: Option<&KeyLabel>,
        e: yubihsm::client::Error,
    ) -> Fail {
        if is_session_error(&e) {
            Fail::Session(e)
        } else {
            Fail::Final(self.final_error(op, label, e))
        }
    }

    fn lost(&self, op: Operation, label: Option<&KeyLabel>, e: &yubihsm::client::Error) -> Error {
        let err = Error::new(BACKEND, op, ErrorKind::SessionLost).detail(format!(
            "the session with the YubiHSM2 at {} broke again right after reconnecting: {e}",
            self.endpoint
        ));
        with_label(err, label)
    }

    fn connect_error(&self, op: Operation, e: yubihsm::client::Error) -> Error {
        let endpoint = &self.endpoint;
        let key = self.credentials.authentication_key_id;
        match (e.kind(), e.device_error()) {
            (ClientErrorKind::AuthenticationError, _) if e.to_string().contains("not found") => {
                Error::new(BACKEND, op, ErrorKind::AuthFailed)
                    .detail(format!(
                        "the YubiHSM2 at {endpoint} has no authentication key with id {key}"
                    ))
                    .hint("set auth_key_id in [custody.yubihsm] to the signer's authentication key")
            }
            (ClientErrorKind::AuthenticationError, _)
            | (_, Some(device::ErrorKind::AuthenticationFailed)) => {
                Error::new(BACKEND, op, ErrorKind::AuthFailed).detail(format!(
                    "the YubiHSM2 at {endpoint} rejected the password for authentication key {key}"
                ))
            }
            (_, Some(device::ErrorKind::SessionsFull)) => sessions_full(op, endpoint),
            _ if is_link_error(&e) => {
                let (kind, hint) = if endpoint == "usb" {
                    (
                        ErrorKind::TokenNotFound,
                        "plug in the YubiHSM2, check `serial` and that the signer's user may open the \
                         USB device (udev rule)",
                    )
                } else {
                    (
                        ErrorKind::SessionLost,
                        "start yubihsm-connector (or fix `connector` in [custody.yubihsm]) and check \
                         that it sees the device",
                    )
                };
                Error::new(BACKEND, op, kind)
                    .detail(format!("cannot reach the YubiHSM2 at {endpoint}: {e}"))
                    .hint(hint)
            }
            _ => Error::new(BACKEND, op, ErrorKind::SessionLost).detail(format!(
                "cannot open a session with the YubiHSM2 at {endpoint}: {e}"
            )),
        }
    }

    /// Maps an error that retrying will not fix.
    pub(crate) fn final_error(
        &self,
        op: Operation,
        label: Option<&KeyLabel>,
        e: yubihsm::client::Error,
    ) -> Error {
        let key = self.credentials.authentication_key_id;
        let err = match e.device_error() {
            Some(device::ErrorKind::ObjectNotFound) => Error::new(BACKEND, op, ErrorKind::KeyNotFound)
                .detail(format!("the YubiHSM2 has no such object: {e}")),
            Some(device::ErrorKind::ObjectExists) => Error::new(BACKEND, op, ErrorKind::KeyExists)
                .detail(format!("an object with this id exists already: {e}")),
            Some(device::ErrorKind::InsufficientPermissions) => {
                Error::new(BACKEND, op, ErrorKind::Config)
                    .detail(format!(
                        "authentication key {key} may not do this: {e}"
                    ))
                    .hint(format!(
                        "give authentication key {key} the signer's capabilities (generate, sign \
                         and delete for asymmetric and HMAC keys; export-wrapped and \
                         import-wrapped for backups) and the key's domains"
                    ))
            }
            Some(device::ErrorKind::AuthenticationFailed) => {
                Error::new(BACKEND, op, ErrorKind::AuthFailed).detail(e.to_string())
            }
            Some(device::ErrorKind::SessionsFull) => sessions_full(op, &self.endpoint),
            Some(device::ErrorKind::StorageFailed) => Error::new(BACKEND, op, ErrorKind::Device)
                .detail(format!("the YubiHSM2 could not store the object: {e}"))
                .hint("the device may be full: list objects with yubihsm-shell and delete unused ones"),
            _ if e.kind() == &ClientErrorKind::AuthenticationError => {
                Error::new(BACKEND, op, ErrorKind::AuthFailed).detail(e.to_string())
            }
            _ => Error::new(BACKEND, op, ErrorKind::Device)
                .detail(format!("the YubiHSM2 at {} answered: {e}", self.endpoint)),
        };
        with_label(err, label)
    }
}

fn sessions_full(op: Operation, endpoint: &str) -> Error {
    Error::new(BACKEND, op, ErrorKind::SessionLost)
        .detail(format!(
            "the YubiHSM2 at {endpoint} has all 16 sessions in use"
        ))
        .hint(
            "another program holds the sessions (yubihsm-shell, a second signer); idle sessions \
             expire after 30 s, then the signer gets one",
        )
}

fn with_label(err: Error, label: Option<&KeyLabel>) -> Error {
    match label {
        Some(l) => err.label(l),
        None => err,
    }
}

/// The USB or HTTP link failed (the crate wraps these in protocol errors while opening a session).
fn is_link_error(e: &yubihsm::client::Error) -> bool {
    if e.kind() == &ClientErrorKind::ConnectorError {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<yubihsm::connector::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Errors after which the session (or the link) cannot be trusted to work again.
pub(crate) fn is_session_error(e: &yubihsm::client::Error) -> bool {
    match e.kind() {
        ClientErrorKind::ConnectorError
        | ClientErrorKind::ClosedSessionError
        | ClientErrorKind::CreateFailed
        | ClientErrorKind::ProtocolError
        // The device answers a command in a session it no longer knows with an error outside the
        // encrypted channel, which the crate reports as a response error.
        | ClientErrorKind::ResponseError => true,
        ClientErrorKind::DeviceError => matches!(
            e.device_error(),
            Some(device::ErrorKind::InvalidSession | device::ErrorKind::SessionFailed)
        ),
        ClientErrorKind::AuthenticationError => false,
    }
}
