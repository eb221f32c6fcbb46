//! Test fixtures: a MockHsm, backends over it, and a stand-in for yubihsm-connector that forwards
//! HTTP requests to a MockHsm and can break the link the way a real connector and device do.
//!
//! yubihsm 0.42 keeps its connector trait private and gives no way to close or expire a client's
//! session, so link faults cannot be injected inside the process. The backend instead talks to
//! this server through the crate's real HTTP connector, which is also what production uses.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use sbtc_custody::{KeyLabel, SecretString};
use sbtc_custody_yubihsm::{Options, YubiHsmBackend};
use yubihsm::Connector;

/// The factory password of MockHsm's authentication key 1.
pub const MOCK_PASSWORD: &str = "password";

pub fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

/// A new simulated device. The yubihsm crate keeps the MockHsm type private; its connector is
/// the handle, and clones of it share one device.
pub fn new_mock() -> Connector {
    Connector::mockhsm()
}

pub fn mock_backend(mock: &Connector, options: Options) -> YubiHsmBackend {
    YubiHsmBackend::with_connector(
        mock.clone(),
        1,
        SecretString::new(MOCK_PASSWORD.into()),
        Options {
            endpoint: "mockhsm".into(),
            ..options
        },
    )
    .unwrap()
}

/// A raw client on `mock`, for planting objects and reading what the backend made.
pub fn raw_client(mock: &Connector) -> yubihsm::Client {
    yubihsm::Client::open(mock.clone(), Default::default(), true).unwrap()
}

/// Counters and switches of the fake connector.
#[derive(Default)]
pub struct Faults {
    /// CreateSession commands that reached the device.
    pub create_sessions: AtomicUsize,
    /// Every request seen.
    pub requests: AtomicUsize,
    /// Close the TCP connection instead of answering this many requests (not forwarded).
    pub drop_next: AtomicUsize,
    /// Answer this many session messages with the device's "invalid session" error (not
    /// forwarded), as a device does after its session timed out or the device restarted.
    pub invalid_session_next: AtomicUsize,
    /// Forward the n-th next session message (1-based) to the device, then close the connection
    /// without the answer: the command happened but the host never heard.
    pub lose_answer_at: AtomicUsize,
    /// Answer CreateSession with this device error code instead of forwarding it.
    pub create_session_error: Mutex<Option<u8>>,
    /// While set, every connection is closed at once (connector up, device gone).
    pub down: AtomicBool,
}

pub struct FakeConnector {
    pub url: String,
    pub faults: Arc<Faults>,
    device: Arc<Mutex<Connector>>,
}

const CREATE_SESSION: u8 = 0x03;
const SESSION_MESSAGE: u8 = 0x05;
const ERROR_RESPONSE: u8 = 0x7f;
pub const DEVICE_INVALID_SESSION: u8 = 0x03;
pub const DEVICE_SESSIONS_FULL: u8 = 0x05;
pub const DEVICE_OBJECT_NOT_FOUND: u8 = 0x0b;

impl FakeConnector {
    pub fn start(mock: &Connector) -> FakeConnector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(Faults::default());
        let device = Arc::new(Mutex::new(mock.clone()));
        let (f, d) = (faults.clone(), device.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (f, d) = (f.clone(), d.clone());
                std::thread::spawn(move || serve(stream, &d, &f));
            }
        });
        FakeConnector {
            url,
            faults,
            device,
        }
    }

    /// From now on, forward to another device (as when the connector is moved to a spare HSM).
    pub fn swap_device(&self, mock: &Connector) {
        *self.device.lock().unwrap() = mock.clone();
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 || buf.len() > 8192 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn serve(mut stream: TcpStream, device: &Mutex<Connector>, f: &Faults) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    while let Some(body) = read_request(&mut stream) {
        f.requests.fetch_add(1, Ordering::SeqCst);
        if f.down.load(Ordering::SeqCst) || take(&f.drop_next) {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let code = body.first().copied().unwrap_or(0);
        let mut lose_answer = false;
        let answer = if code == CREATE_SESSION {
            match *f.create_session_error.lock().unwrap() {
                Some(err) => vec![ERROR_RESPONSE, 0, 1, err],
                None => {
                    f.create_sessions.fetch_add(1, Ordering::SeqCst);
                    forward(device, body)
                }
            }
        } else if code == SESSION_MESSAGE && take(&f.invalid_session_next) {
            vec![ERROR_RESPONSE, 0, 1, DEVICE_INVALID_SESSION]
        } else {
            if code == SESSION_MESSAGE {
                let due = f.lose_answer_at.load(Ordering::SeqCst);
                if due > 0 {
                    f.lose_answer_at.store(due - 1, Ordering::SeqCst);
                    lose_answer = due == 1;
                }
            }
            forward(device, body)
        };
        if lose_answer {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        // One write: the yubihsm crate's HTTP reader overwrites its buffer on every read, so an
        // answer split over two TCP segments would reach it garbled.
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        )
        .into_bytes();
        out.extend_from_slice(&answer);
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn forward(device: &Mutex<Connector>, body: Vec<u8>) -> Vec<u8> {
    let device = device.lock().unwrap().clone();
    match device.send_message(yubihsm::Uuid::nil(), body.into()) {
        Ok(answer) => answer.into(),
        // What yubihsm-connector answers when it cannot talk to the device.
        Err(_) => vec![ERROR_RESPONSE, 0, 1, 0x10],
    }
}

/// A password file the signer may read (mode 0600).
pub fn password_file(dir: &tempfile::TempDir, password: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("yubihsm-password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
