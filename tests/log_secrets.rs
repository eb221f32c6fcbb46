//! Secrets never reach a log, whatever the log filter asks for.
//!
//! In-process: a DKG and a signing batch among three signers (keystore, SoftHSM2, YubiHSM2
//! MockHsm) under the binary's own subscriber (`logging::subscriber`) built from `trace`, and
//! from `wsts=trace,p256k1=trace`, every line captured. The secret values those rounds made
//! (recorded by the `testing`-only tap: transport keys, private polynomials, the shares made from
//! them and received, ECDH keys, key shares, signing nonces) must not appear in the capture in any
//! encoding. Through the binary: a devnet under `SBTC_LOG=trace` and a specific
//! `wsts::state_machine::signer=trace`, whose children's logs must hold no scalar dumps.

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sbtc_custody::{Custody, KeyKind, KeyLabel};
use sbtc_hsm_signer::{
    logging::{
        self,
        secret_tap::{self, Secret, Value},
    },
    signing::{
        ApproveAll, Approver, BatchCoordinator, BatchSigner, DkgId, InMemoryNonceLedger,
        InProcessTransport, LocalCluster, NonceLedger, Participation, SighashRequest, SpendKind,
    },
};
use tracing_subscriber::util::SubscriberInitExt as _;

const N: usize = 3;
const T: u32 = 2;
const LIMIT: Duration = Duration::from_secs(180);

/// The secret tap and the log bridge are per process: one scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Everything written to the log, in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn writer(&self) -> impl Fn() -> CaptureWriter + Send + Sync + 'static {
        let buf = self.0.clone();
        move || CaptureWriter(buf.clone())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// The production subscriber from `directives`, writing plain text (no colours) into a buffer.
fn capturing(directives: &str) -> (tracing::Dispatch, Capture) {
    let capture = Capture::default();
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(capture.writer());
    let subscriber = logging::subscriber(directives, output).expect("valid directives");
    (tracing::Dispatch::new(subscriber), capture)
}

/// A 256-bit big-endian number in decimal.
fn decimal(be: &[u8]) -> String {
    let mut n: Vec<u32> = be.iter().map(|&b| b as u32).collect();
    let mut digits = Vec::new();
    while n.iter().any(|&d| d != 0) {
        let mut rem = 0u32;
        for d in n.iter_mut() {
            let cur = rem * 256 + *d;
            *d = cur / 10;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap()
}

/// `bytes` as hex (both cases), as a Rust byte list, and as a decimal number, read big-endian
/// and little-endian; each 8-byte word as hex too.
fn byte_encodings(bytes: &[u8], out: &mut Vec<(String, String)>) {
    let le: Vec<u8> = bytes.iter().rev().copied().collect();
    for (order, b) in [("big-endian", bytes), ("little-endian", &le[..])] {
        out.push((format!("{order} hex"), hex::encode(b)));
        out.push((format!("{order} HEX"), hex::encode_upper(b)));
        out.push((format!("{order} byte list"), format!("{b:?}")));
        out.push((format!("{order} decimal"), decimal(b)));
    }
    for word in bytes.chunks(8).filter(|w| w.len() == 8) {
        out.push(("8-byte word hex".into(), hex::encode(word)));
        out.push(("8-byte word HEX".into(), hex::encode_upper(word)));
    }
}

/// Every encoding of `secret` a log line could carry: wsts' `Debug` (and each of its decimal
/// limbs, also in hex), `Display` (base58), hex, byte lists and decimal.
fn encodings(secret: &Secret) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match &secret.value {
        Value::Scalar(x) => {
            let debug = format!("{x:?}");
            let limbs = debug
                .split_once("d: [")
                .and_then(|(_, rest)| rest.split_once(']'))
                .map(|(l, _)| l.to_string())
                .unwrap_or_else(|| panic!("unexpected Scalar Debug form: {debug}"));
            for limb in limbs.split(',').map(|l| l.trim().parse::<u64>().unwrap()) {
                // A limb below 2^32 is too short to tell apart from an unrelated number.
                if limb >= 1 << 32 {
                    out.push(("Debug limb".into(), limb.to_string()));
                    out.push(("Debug limb hex".into(), format!("{limb:x}")));
                    out.push(("Debug limb HEX".into(), format!("{limb:X}")));
                }
            }
            out.push(("Debug".into(), debug));
            out.push(("Display (base58)".into(), x.to_string()));
            byte_encodings(&x.to_bytes(), &mut out);
        }
        Value::Point(p) => {
            out.push(("Debug".into(), format!("{p:?}")));
            out.push(("Display".into(), p.to_string()));
            byte_encodings(p.compress().as_bytes(), &mut out);
            byte_encodings(&p.x().to_bytes(), &mut out);
        }
    }
    out
}

fn is_zero(s: &Secret) -> bool {
    matches!(&s.value, Value::Scalar(x) if x.to_bytes() == [0u8; 32])
}

/// The leaks of `secrets` (and of `words`) in `log`, described; empty if none.
fn leaks(log: &str, secrets: &[Secret], words: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut report = |what: String, needle: &str| {
        if let Some(at) = log.find(needle) {
            let start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = log[at..].find('\n').map_or(log.len(), |i| at + i);
            let line: String = log[start..end].chars().take(300).collect();
            found.push(format!("{what} in: {line}"));
        }
    };
    // A zero (an unused or wiped slot) is no secret, and "0" is everywhere.
    for s in secrets.iter().filter(|s| !is_zero(s)) {
        for (encoding, needle) in encodings(s) {
            report(format!("{} ({encoding})", s.what), &needle);
        }
    }
    for w in words {
        report("a passphrase or PIN".into(), w);
    }
    found
}

fn requests(count: usize) -> Vec<SighashRequest> {
    (0..count)
        .map(|i| {
            let mut sighash = [0u8; 32];
            sighash[..8].copy_from_slice(&(i as u64).to_be_bytes());
            sighash[31] = 0x5a;
            SighashRequest {
                sighash,
                kind: if i % 2 == 0 {
                    SpendKind::KeySpend { merkle_root: None }
                } else {
                    SpendKind::ScriptPath
                },
            }
        })
        .collect()
}

/// A DKG and a batch of 4 sighashes among a keystore, a SoftHSM2 token and a MockHsm signer.
/// Returns the passphrase and PIN in use.
async fn dkg_and_batch() -> Vec<String> {
    let dir = tempfile::TempDir::new().unwrap();
    let seal = KeyLabel::new("seal").unwrap();
    let token = pkcs11_tests::softhsm::token();
    let pin = token.user_pin.clone();
    let softhsm: Arc<dyn Custody> = Arc::new(
        tokio::task::spawn_blocking(move || token.open())
            .await
            .unwrap(),
    );
    common::add_keys(&softhsm).await;
    let custodies = vec![
        common::keystore(dir.path(), "log-secrets").await,
        softhsm,
        common::mockhsm().await,
    ];
    for c in &custodies {
        c.generate(&seal, KeyKind::Seal).await.unwrap();
    }
    let cluster = LocalCluster::new(
        custodies,
        &common::identity_label(),
        &seal,
        T,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let coordinator = 1;
    let outcomes = cluster.run_dkg(DkgId(7), coordinator).await.unwrap();

    let ledgers: Vec<Arc<dyn NonceLedger>> = (0..N)
        .map(|_| Arc::new(InMemoryNonceLedger::default()) as Arc<dyn NonceLedger>)
        .collect();
    let approvers: Vec<Arc<dyn Approver>> = (0..N)
        .map(|_| Arc::new(ApproveAll) as Arc<dyn Approver>)
        .collect();
    let signers = cluster.batch_signers(coordinator, &outcomes, ledgers, approvers);
    let (transports, _) = cluster.network();
    let mut own: Option<(BatchSigner, InProcessTransport)> = None;
    let mut servers = Vec::new();
    for (mut signer, mut transport) in signers.into_iter().zip(transports) {
        if signer.me() == coordinator {
            own = Some((signer, transport));
        } else {
            servers.push(tokio::spawn(async move {
                signer.serve(&mut transport).await;
            }));
        }
    }
    let (mut own, mut transport) = own.unwrap();
    let coord = BatchCoordinator::new(
        cluster.signers[coordinator as usize].ctx.clone(),
        own.public().clone(),
    )
    .unwrap();
    let batch = requests(4);
    let signed = coord
        .sign(&mut own, &mut transport, &batch, Participation::All)
        .await
        .unwrap();
    assert_eq!(signed.signatures.len(), batch.len());
    coord.finish(&mut transport).await;
    for s in servers {
        s.await.unwrap();
    }
    vec!["peer test passphrase".to_string(), pin]
}

/// Runs [`dkg_and_batch`] with the production subscriber from `directives` as the default on
/// every thread of its runtime; returns the captured log and the secrets the rounds made.
fn run_logged(directives: &str) -> (String, Vec<Secret>, Vec<String>) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dispatch, capture) = capturing(directives);
    let for_threads = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        // Worker and blocking threads (custody calls) log into the capture too. `set_default`
        // also routes `log` records (cryptoki, yubihsm, rustls) into tracing.
        .on_thread_start(move || std::mem::forget(for_threads.clone().set_default()))
        .build()
        .unwrap();
    let _guard = dispatch.set_default();
    secret_tap::start();
    let words = runtime.block_on(async {
        tokio::time::timeout(LIMIT, dkg_and_batch())
            .await
            .expect("DKG and batch finished in time")
    });
    let secrets = secret_tap::stop();
    drop(runtime);
    (capture.text(), secrets, words)
}

fn assert_no_secret(directives: &str) {
    let (log, secrets, words) = run_logged(directives);

    // The tap saw the rounds: per signer a transport key, its polynomial (T coefficients), the N
    // shares it made and the N it received, its key share; 2 nonces per sighash and signer.
    let count = |what: &str| {
        secrets
            .iter()
            .filter(|s| s.what == what && !is_zero(s))
            .count()
    };
    assert_eq!(count("transport key"), N, "tap: transport keys");
    assert_eq!(
        count("polynomial coefficient"),
        N * T as usize,
        "tap: polynomials"
    );
    assert_eq!(count("private share sent"), N * N, "tap: shares sent");
    assert_eq!(
        count("private share received"),
        N * N,
        "tap: shares received"
    );
    assert_eq!(count("key share"), N, "tap: key shares");
    assert!(count("signing nonce") >= 2 * N * 4, "tap: signing nonces");

    // The capture is the real log: wsts' INFO lines are in it (and under `trace`, verbose lines
    // of other crates), so an empty or muted log cannot pass.
    assert!(
        log.contains("wsts::state_machine::signer") && log.contains("sending DkgPrivateShares"),
        "wsts' INFO lines are missing from the log:\n{log}"
    );
    if directives == "trace" {
        assert!(
            log.contains(" TRACE ") || log.contains(" DEBUG "),
            "no verbose line under `trace`:\n{log}"
        );
    }

    let found = leaks(&log, &secrets, &words);
    assert!(
        found.is_empty(),
        "with the log filter `{directives}`, {} secret encodings reached the log, e.g.:\n{}",
        found.len(),
        found
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for pattern in ["Scalar {", "secp256k1_scalar", " shares {"] {
        assert!(
            !log.contains(pattern),
            "`{pattern}` in the log under `{directives}`"
        );
    }
}

#[test]
fn dkg_and_batch_under_trace_log_no_share_polynomial_or_nonce() {
    assert_no_secret("trace");
}

#[test]
fn dkg_and_batch_under_wsts_and_p256k1_trace_log_no_share_polynomial_or_nonce() {
    assert_no_secret("wsts=trace,p256k1=trace");
}

/// The cap holds against every way of asking: a global level, the crate, the exact module, a
/// span filter; what is under the cap and other crates' verbose lines still come through.
#[test]
fn no_directive_lifts_the_cap_and_what_is_under_it_is_kept() {
    for directives in [
        "trace",
        "wsts=trace,p256k1=trace",
        "wsts::state_machine::signer=trace",
        "info,wsts::state_machine::signer=trace,wsts::v2=debug,p256k1::scalar=trace",
        "trace,wsts[dkg]=trace",
    ] {
        let (dispatch, capture) = capturing(directives);
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::trace!(target: "wsts::state_machine::signer", "LEAK-signer-trace");
            tracing::debug!(target: "wsts::v2", "LEAK-v2-debug");
            tracing::trace!(target: "p256k1::scalar", "LEAK-p256k1-trace");
            tracing::info!(target: "wsts::state_machine::signer", "KEPT-wsts-info");
            tracing::trace!(target: "sbtc_hsm_signer::signing", "OWN-trace");
        });
        let log = capture.text();
        assert!(!log.contains("LEAK"), "`{directives}` let through:\n{log}");
        assert!(log.contains("KEPT-wsts-info"), "`{directives}`:\n{log}");
        if directives.starts_with("trace") {
            assert!(log.contains("OWN-trace"), "`{directives}`:\n{log}");
        }
        assert!(
            !logging::exceeded_caps(directives).is_empty(),
            "`{directives}` exceeds a cap"
        );
    }
    for directives in [
        "info",
        "warn,cryptoki::mechanism=off",
        "sbtc_hsm_signer=trace",
    ] {
        assert!(
            logging::exceeded_caps(directives).is_empty(),
            "`{directives}` exceeds no cap"
        );
    }
}

#[test]
fn sbtc_log_wins_over_rust_log_which_is_read_when_sbtc_log_is_unset() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(*v))
        }
    };
    let c = logging::choose(env(&[("SBTC_LOG", "debug"), ("RUST_LOG", "trace")])).unwrap();
    assert_eq!(
        (c.source, c.directives.as_str()),
        (Some("SBTC_LOG"), "debug")
    );
    let c = logging::choose(env(&[("SBTC_LOG", ""), ("RUST_LOG", "trace")])).unwrap();
    assert_eq!(
        (c.source, c.directives.as_str()),
        (Some("RUST_LOG"), "trace")
    );
    let c = logging::choose(env(&[])).unwrap();
    assert_eq!(
        (c.source, c.directives.as_str()),
        (None, logging::DEFAULT_DIRECTIVES)
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_sbtc-hsm-signer");

/// The binary says once that it capped the filter, and a filter it cannot read is named with
/// the default used instead (a command that stops right after start-up: `devnet --signers 0`).
#[test]
fn the_binary_warns_about_a_capped_or_invalid_filter() {
    let run = |var: &str, value: &str| {
        let out = Command::new(BIN)
            .args(["devnet", "--signers", "0"])
            .env_remove("SBTC_LOG")
            .env_remove("RUST_LOG")
            .env(var, value)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("SBTC_LOG", "wsts::state_machine::signer=trace");
    assert_eq!(err.matches("capped").count(), 1, "{err}");
    assert!(err.contains("wsts at info"), "{err}");
    let err = run("RUST_LOG", "debug");
    assert!(
        err.contains("RUST_LOG=`debug`") && err.contains("capped"),
        "{err}"
    );
    let err = run("SBTC_LOG", "wsts=loud");
    assert!(
        err.contains("SBTC_LOG=`wsts=loud` is not a valid log filter")
            && err.contains(logging::DEFAULT_DIRECTIVES),
        "{err}"
    );
    let err = run("SBTC_LOG", "info");
    assert!(!err.contains("capped"), "{err}");
}

/// The real binary: a devnet (keystores and SoftHSM2 tokens, mTLS links, DKG, verification, a
/// batch) with `SBTC_LOG=trace` plus the exact module that printed shares. No child's log holds
/// a scalar dump, its passphrase or PIN, and each says the filter was capped.
#[test]
fn devnet_under_sbtc_log_trace_logs_no_scalar() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("devnet");
    // Files, not pipes: under `trace` the parent writes more than a pipe holds.
    let (out_path, err_path) = (tmp.path().join("stdout"), tmp.path().join("stderr"));
    let mut child = Command::new(BIN)
        .args([
            "devnet",
            "--signers",
            "3",
            "--threshold",
            "2",
            "--batch",
            "3",
            "--backend",
            "mixed",
            "--work-dir",
        ])
        .arg(&work)
        .env("SBTC_LOG", "trace,wsts::state_machine::signer=trace")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("devnet did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&out_path).unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    assert!(status.success(), "devnet failed: {status}\n{out}\n{tail}");
    assert!(out.contains("signatures verified: 3/3"), "{out}");
    for pattern in ["Scalar {", "secp256k1_scalar", " shares {"] {
        assert!(
            !err.contains(pattern),
            "the devnet itself logged `{pattern}`"
        );
    }
    for i in 0..3 {
        let dir = work.join(format!("signer-{i}"));
        let log = std::fs::read_to_string(dir.join("signer.log")).unwrap();
        assert!(
            log.contains("sending DkgPrivateShares") && log.contains("TRACE"),
            "signer {i}'s log lacks wsts' INFO or any TRACE line"
        );
        assert_eq!(
            log.matches("capped so that no secret").count(),
            1,
            "signer {i}"
        );
        for pattern in ["Scalar {", "secp256k1_scalar", " shares {"] {
            assert!(!log.contains(pattern), "signer {i} logged `{pattern}`");
        }
        for file in ["passphrase", "pin"] {
            if let Ok(secret) = std::fs::read_to_string(dir.join(file)) {
                assert!(!log.contains(secret.trim()), "signer {i} logged its {file}");
            }
        }
    }
}
