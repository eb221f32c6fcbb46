//! The HTTP path, the session lifecycle and login failures, through a stand-in yubihsm-connector
//! (see `common`) in front of MockHsm.

mod common;

use std::sync::atomic::Ordering;

use common::{
    label, new_mock, password_file, FakeConnector, DEVICE_OBJECT_NOT_FOUND, DEVICE_SESSIONS_FULL,
    MOCK_PASSWORD,
};
use sbtc_custody::{Custody, ErrorKind, KeyKind, PublicKey, SecretString};
use sbtc_custody_yubihsm::{open, Config, Options, YubiHsmBackend};
use sha2::{Digest, Sha256};

fn digest(msg: &str) -> [u8; 32] {
    Sha256::digest(msg.as_bytes()).into()
}

fn config(url: &str, password: std::path::PathBuf) -> Config {
    let text = format!(
        r#"
        connector = "{url}"
        auth_key_id = 1
        password_file = "{}"
        queue_timeout_ms = 20000
        "#,
        password.display()
    );
    toml::from_str(&text).unwrap()
}

fn open_over(fake: &FakeConnector, dir: &tempfile::TempDir) -> YubiHsmBackend {
    open(&config(&fake.url, password_file(dir, MOCK_PASSWORD))).unwrap()
}

#[tokio::test]
async fn one_session_serves_every_call() {
    let mock = new_mock();
    let fake = FakeConnector::start(&mock);
    let dir = tempfile::tempdir().unwrap();
    let hsm = open_over(&fake, &dir);
    let info = hsm
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    hsm.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    let Some(PublicKey::Secp256k1(pk)) = info.public_key else {
        panic!()
    };
    for i in 0..40 {
        let d = digest(&format!("{i}"));
        let sig = hsm
            .sign_secp256k1_prehash(&label("identity"), &d)
            .await
            .unwrap();
        assert!(sig.verify(&d, &pk));
        let blob = hsm.seal(&label("seal"), b"s", b"a").await.unwrap();
        hsm.unseal(&label("seal"), &blob, b"a").await.unwrap();
    }
    hsm.list().await.unwrap();
    assert!(hsm.health().await.unwrap().ok);
    assert_eq!(fake.faults.create_sessions.load(Ordering::SeqCst), 1);
    // Cached labels: 160 key operations cost about one device message each.
    assert!(fake.faults.requests.load(Ordering::SeqCst) < 200);
}

#[tokio::test]
async fn a_session_the_device_forgot_is_replaced_and_the_call_retried() {
    let mock = new_mock();
    let fake = FakeConnector::start(&mock);
    let dir = tempfile::tempdir().unwrap();
    let hsm = open_over(&fake, &dir);
    let info = hsm
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let Some(PublicKey::Secp256k1(pk)) = info.public_key else {
        panic!()
    };
    assert_eq!(fake.faults.create_sessions.load(Ordering::SeqCst), 1);

    // As after the device restarted or timed the session out.
    fake.faults.invalid_session_next.store(1, Ordering::SeqCst);
    let d = digest("after restart");
    let sig = hsm
        .sign_secp256k1_prehash(&label("identity"), &d)
        .await
        .unwrap();
    assert!(sig.verify(&d, &pk));
    assert_eq!(fake.faults.create_sessions.load(Ordering::SeqCst), 2);

    // And the new session is kept.
    for _ in 0..5 {
        hsm.sign_secp256k1_prehash(&label("identity"), &d)
            .await
            .unwrap();
    }
    assert_eq!(fake.faults.create_sessions.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_dropped_link_is_reopened_and_the_call_retried() {
    let mock = new_mock();
    let fake = FakeConnector::start(&mock);
    let dir = tempfile::tempdir().unwrap();
    let hsm = open_over(&fake, &dir);
    hsm.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    let blob = hsm.seal(&label("seal"), b"share", b"").await.unwrap();

    fake.faults.drop_next.store(1, Ordering::SeqCst);
    assert_eq!(
        hsm.unseal(&label("seal"), &blob, b"")
            .await
            .unwrap()
            .expose(),
        b"share"
    );
    assert_eq!(fake.faults.create_sessions.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn generate_and_destroy_survive_a_lost_answer() {
    let mock = new_mock();
    let fake = FakeConnector::start(&mock);
    let dir = tempfile::tempdir().unwrap();
    let hsm = open_over(&fake, &dir);

    // generate = list by label, list all (free id), generate: the device makes the key but the
    // answer never arrives. The retry must find that key, not report "key exists".
    fake.faults.lose_answer_at.store(3, Ordering::SeqCst);
    let info = hsm
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    assert_eq!(fake.faults.lose_answer_at.load(Ordering::SeqCst), 0);
    assert_eq!(fake.faults.create_sessions.load(Ordering::SeqCst), 2);
    assert_eq!(hsm.list().await.unwrap(), vec![info.clone()]);
    assert_eq!(
        hsm.public_key(&label("identity")).await.unwrap(),
        info.public_key.unwrap()
    );

    // destroy = list by label, object info, delete: the delete happens, the answer is lost.
    fake.faults.lose_answer_at.store(3, Ordering::SeqCst);
    hsm.destroy(&label("identity")).await.unwrap();
    assert_eq!(fake.faults.lose_answer_at.load(Ordering::SeqCst), 0);
    assert!(hsm.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_outage_is_reported_with_the_url_and_recovery_needs_no_restart() {
    let mock = new_mock();
    let fake = FakeConnector::start(&mock);
    let dir = tempfile::tempdir().unwrap();
    let hsm = open_over(&fake, &dir);
    hsm.generate(&label("tls"), KeyKind::P256).await.unwrap();

    fake.faults.down.store(true, Ordering::SeqCst);
    let before = fake.faults.requests.load(Ordering::SeqCst);
    let e = hsm
        .sign_p256_prehash(&label("tls"), &digest("x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SessionLost, "{e}");
    assert!(e.to_string().contains(&fake.url), "{e}");
    // It gives up after a bounded number of tries (counted at the connector), not never.
    let tries = fake.faults.requests.load(Ordering::SeqCst) - before;
    assert!(
        (1..=4).contains(&tries),
        "{tries} requests during the outage"
    );
    let h = hsm.health().await.unwrap();
    assert!(!h.ok);
    assert!(h.detail.contains(&fake.url), "{h:?}");

    fake.faults.down.store(false, Ordering::SeqCst);
    hsm.sign_p256_prehash(&label("tls"), &digest("x"))
        .await
        .unwrap();
    assert!(hsm.health().await.unwrap().ok);
}

#[tokio::test]
async fn keys_are_looked_up_again_on_whatever_device_the_new_session_reaches() {
    // A spare device holding another key under the same label (same object id, too).
    let spare = new_mock();
    let spare_key = common::mock_backend(&spare, Options::default())
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let spare_b = new_mock();
    let spare_b_key = common::mock_backend(&spare_b, Options::default())
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();

    let mock = new_mock();
    let fake = FakeConnector::start(&mock);
    let dir = tempfile::tempdir().unwrap();
    let hsm = open_over(&fake, &dir);
    let first = hsm
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    assert_eq!(
        hsm.public_key(&label("identity")).await.unwrap(),
        first.public_key.unwrap()
    );

    // Outage, then the connector reaches the spare: the first call after it connects afresh.
    fake.faults.down.store(true, Ordering::SeqCst);
    hsm.public_key(&label("identity")).await.unwrap(); // from the cache, no device call
    assert!(!hsm.health().await.unwrap().ok);
    fake.swap_device(&spare);
    fake.faults.down.store(false, Ordering::SeqCst);
    assert_eq!(
        hsm.public_key(&label("identity")).await.unwrap(),
        spare_key.public_key.unwrap()
    );

    // The session breaks and the reconnect lands on yet another device.
    fake.swap_device(&spare_b);
    fake.faults.invalid_session_next.store(1, Ordering::SeqCst);
    assert!(hsm.health().await.unwrap().ok);
    assert_eq!(
        hsm.public_key(&label("identity")).await.unwrap(),
        spare_b_key.public_key.unwrap()
    );
}

#[tokio::test]
async fn an_unreachable_connector_names_its_url() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let e = open(&config(&url, password_file(&dir, MOCK_PASSWORD))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SessionLost, "{e}");
    assert!(e.to_string().contains(&url), "{e}");
    assert!(e.to_string().contains("yubihsm-connector"), "{e}");
}

#[tokio::test]
async fn a_wrong_password_fails_login_without_showing_it() {
    let mock = new_mock();
    let fake = FakeConnector::start(&mock);
    let dir = tempfile::tempdir().unwrap();
    let e = open(&config(&fake.url, password_file(&dir, "hunter2-wrong"))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthFailed, "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    assert!(e.to_string().contains("authentication key 1"), "{e}");

    // Same over the in-process connector.
    let e = YubiHsmBackend::with_connector(
        mock.clone(),
        1,
        SecretString::new("hunter2-wrong".into()),
        Options::default(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthFailed, "{e}");
}

#[tokio::test]
async fn a_missing_auth_key_id_is_named() {
    // MockHsm panics on a CreateSession for an unknown key; a real device answers "object not
    // found", which is what the stand-in connector sends.
    let mock = new_mock();
    let fake = FakeConnector::start(&mock);
    *fake.faults.create_session_error.lock().unwrap() = Some(DEVICE_OBJECT_NOT_FOUND);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake.url, password_file(&dir, MOCK_PASSWORD));
    cfg.auth_key_id = 7;
    let e = open(&cfg).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthFailed, "{e}");
    assert!(
        e.to_string().contains("no authentication key with id 7"),
        "{e}"
    );
    assert!(e.to_string().contains("auth_key_id"), "{e}");
}

#[tokio::test]
async fn a_device_with_all_sessions_taken_is_explained() {
    let mock = new_mock();
    let fake = FakeConnector::start(&mock);
    *fake.faults.create_session_error.lock().unwrap() = Some(DEVICE_SESSIONS_FULL);
    let dir = tempfile::tempdir().unwrap();
    let e = open(&config(&fake.url, password_file(&dir, MOCK_PASSWORD))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SessionLost, "{e}");
    assert!(e.to_string().contains("16 sessions"), "{e}");
}

#[tokio::test]
async fn the_serial_number_must_match() {
    let mock = new_mock();
    let e = YubiHsmBackend::with_connector(
        mock.clone(),
        1,
        SecretString::new(MOCK_PASSWORD.into()),
        Options {
            expected_serial: Some("12345".into()),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TokenNotFound, "{e}");
    assert!(e.to_string().contains("0000012345"), "{e}");
    assert!(e.to_string().contains("0123456789"), "{e}");

    // The MockHsm serial, written without its leading zero, is accepted.
    let ok = YubiHsmBackend::with_connector(
        mock,
        1,
        SecretString::new(MOCK_PASSWORD.into()),
        Options {
            expected_serial: Some("123456789".into()),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(ok.serial(), "0123456789");
}

#[tokio::test]
async fn usb_without_a_device_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("usb", password_file(&dir, MOCK_PASSWORD));
    cfg.serial = Some("0000012345".into());
    let e = open(&cfg).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TokenNotFound, "{e}");
    assert!(e.to_string().contains("usb"), "{e}");
}

#[test]
fn config_is_strict() {
    let full: Config = toml::from_str(
        r#"
        connector = "usb"
        serial = "0012345678"
        auth_key_id = 2
        password_credential = "yubihsm-password"
        domains = [1, 4]
        backup_wrap_key_id = 200
        timeout_ms = 10000
        queue_timeout_ms = 5000
        "#,
    )
    .unwrap();
    assert_eq!(full.domains, vec![1, 4]);
    assert_eq!(full.backup_wrap_key_id, Some(200));

    let minimal: Config = toml::from_str(
        "connector = \"http://127.0.0.1:12345\"\nauth_key_id = 1\npassword_prompt = true",
    )
    .unwrap();
    assert_eq!(minimal.domains, vec![1]);
    assert_eq!(minimal.backup_wrap_key_id, None);

    let typo =
        toml::from_str::<Config>("connector = \"usb\"\nauth_key_id = 1\npasword_file = \"/x\"")
            .unwrap_err();
    assert!(typo.to_string().contains("pasword_file"), "{typo}");

    // Exactly one password source, and sane values, checked before any device traffic.
    let mut two = minimal.clone();
    two.password_env = Some("X".into());
    let e = open(&two).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(
        e.to_string().contains("more than one password source"),
        "{e}"
    );
    let mut none = minimal.clone();
    none.password_prompt = false;
    assert_eq!(open(&none).unwrap_err().kind(), ErrorKind::Config);
    let mut bad = minimal.clone();
    bad.domains = vec![0];
    assert_eq!(open(&bad).unwrap_err().kind(), ErrorKind::Config);
    let mut bad = minimal;
    bad.connector = "https://hsm.example:12345".into();
    let e = open(&bad).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
}

#[tokio::test]
async fn a_missing_password_env_is_a_secret_error() {
    let mut cfg = config("http://127.0.0.1:1", "/unused".into());
    cfg.password_file = None;
    cfg.password_env = Some("SBTC_YUBIHSM_TEST_SURELY_UNSET".into());
    let e = open(&cfg).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SecretUnavailable, "{e}");
}
