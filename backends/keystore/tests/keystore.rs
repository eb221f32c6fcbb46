//! The keystore as an operator and the signer see it: keys round-trip and survive restarts, and
//! every way a file can go wrong gives its own error, never a panic, never a changed file.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sbtc_custody::{
    Custody, Error, ErrorKind, KeyKind, KeyLabel, PublicKey, SealedBlob, SecretSource, SecretString,
};
use sbtc_custody_keystore::{Config, KdfParams, Keystore, OpenOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

const PASS: &str = "correct horse battery staple";

fn pass(s: &str) -> SecretString {
    SecretString::new(s.to_owned())
}

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

fn digest(msg: &str) -> [u8; 32] {
    Sha256::digest(msg.as_bytes()).into()
}

async fn fresh(dir: &Path) -> (PathBuf, Keystore) {
    let path = dir.join("keystore.json");
    let ks = Keystore::create_with_passphrase(&path, &pass(PASS), KdfParams::insecure_for_tests())
        .await
        .unwrap();
    (path, ks)
}

/// A keystore holding one key of each kind, closed again.
async fn populated(dir: &Path) -> PathBuf {
    let (path, ks) = fresh(dir).await;
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    ks.generate(&label("tls"), KeyKind::P256).await.unwrap();
    ks.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    path
}

/// Opens a test keystore (test KDF, so with the test options).
async fn open(path: &Path) -> Result<Keystore, Error> {
    Keystore::open_with_options(path, &pass(PASS), &OpenOptions::insecure_test()).await
}

/// Opens a file that must fail; checks the bytes did not change and returns the error.
async fn open_fails(path: &Path, passphrase: &str) -> Error {
    let before = fs::read(path).unwrap();
    let result =
        Keystore::open_with_options(path, &pass(passphrase), &OpenOptions::insecure_test()).await;
    assert_eq!(fs::read(path).unwrap(), before, "opening changed the file");
    let err = result.expect_err("the damaged file opened");
    let text = err.to_string();
    assert!(!text.contains(passphrase), "the passphrase leaked: {text}");
    err
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Rewrites the file with an edited document; `fs::write` keeps the file's mode (0600).
fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut doc = read_json(path);
    edit(&mut doc);
    fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn other_hex_digit(c: char) -> char {
    if c == '0' {
        '1'
    } else {
        '0'
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips and the conformance expectations.

#[tokio::test]
async fn every_kind_round_trips_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ks) = fresh(dir.path()).await;

    let id = ks
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let tls = ks.generate(&label("tls"), KeyKind::P256).await.unwrap();
    let seal = ks.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    assert_eq!(seal.public_key, None);
    let Some(PublicKey::Secp256k1(id_pk)) = id.public_key else {
        panic!("{id:?}")
    };
    let Some(PublicKey::P256(tls_pk)) = tls.public_key else {
        panic!("{tls:?}")
    };
    assert_eq!(
        ks.public_key(&label("identity")).await.unwrap(),
        PublicKey::Secp256k1(id_pk)
    );
    assert_eq!(
        ks.public_key(&label("tls")).await.unwrap(),
        PublicKey::P256(tls_pk)
    );

    let d = digest("stacks multisig sighash");
    let sig = ks
        .sign_secp256k1_prehash(&label("identity"), &d)
        .await
        .unwrap();
    assert_eq!(sig.recover(&d).unwrap(), id_pk);
    assert!(sig.verify(&d, &id_pk), "not a valid low-S signature");
    let mut sig_only = secp256k1::ecdsa::Signature::from_compact(sig.compact()).unwrap();
    sig_only.normalize_s();
    assert_eq!(&sig_only.serialize_compact(), sig.compact(), "high S");

    let p = ks.sign_p256_prehash(&label("tls"), &d).await.unwrap();
    let p_sig = p256::ecdsa::Signature::from_slice(&p.to_bytes()).unwrap();
    p256::ecdsa::VerifyingKey::from(&tls_pk)
        .verify_prehash(&d, &p_sig)
        .unwrap();

    let blob = ks
        .seal(&label("seal"), b"wsts share", b"dkg-7")
        .await
        .unwrap();
    let back = ks.unseal(&label("seal"), &blob, b"dkg-7").await.unwrap();
    assert_eq!(back.expose(), b"wsts share");

    let listed = ks.list().await.unwrap();
    drop(ks);

    let ks = open(&path).await.unwrap();
    assert_eq!(ks.list().await.unwrap(), listed);
    assert_eq!(listed.len(), 3);
    let again = ks
        .sign_secp256k1_prehash(&label("identity"), &d)
        .await
        .unwrap();
    assert_eq!(again.recover(&d).unwrap(), id_pk);
    assert!(ks
        .sign_p256_prehash(&label("tls"), &d)
        .await
        .unwrap()
        .verify(&d, &tls_pk));
    let back = ks.unseal(&label("seal"), &blob, b"dkg-7").await.unwrap();
    assert_eq!(
        back.expose(),
        b"wsts share",
        "seal key changed across reopen"
    );
}

#[tokio::test]
async fn labels_kinds_and_existence_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let ks = open(&path).await.unwrap();
    let d = [7u8; 32];

    for kind in [KeyKind::Secp256k1, KeyKind::P256, KeyKind::Seal] {
        for taken in ["identity", "tls", "seal"] {
            let e = ks.generate(&label(taken), kind).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::KeyExists, "{e}");
            assert_eq!(e.key_label(), Some(taken));
        }
    }

    let missing = label("nope");
    let blob = ks.seal(&label("seal"), b"x", b"").await.unwrap();
    let errors = [
        ks.public_key(&missing).await.unwrap_err(),
        ks.sign_secp256k1_prehash(&missing, &d).await.unwrap_err(),
        ks.sign_p256_prehash(&missing, &d).await.unwrap_err(),
        ks.seal(&missing, b"x", b"").await.unwrap_err(),
        ks.unseal(&missing, &blob, b"").await.unwrap_err(),
        ks.destroy(&missing).await.unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.kind(), ErrorKind::KeyNotFound, "{e}");
        assert_eq!(e.key_label(), Some("nope"), "{e}");
    }

    let wrong = [
        ks.sign_p256_prehash(&label("identity"), &d)
            .await
            .unwrap_err(),
        ks.sign_secp256k1_prehash(&label("tls"), &d)
            .await
            .unwrap_err(),
        ks.sign_secp256k1_prehash(&label("seal"), &d)
            .await
            .unwrap_err(),
        ks.seal(&label("identity"), b"x", b"").await.unwrap_err(),
        ks.unseal(&label("tls"), &blob, b"").await.unwrap_err(),
        ks.public_key(&label("seal")).await.unwrap_err(),
    ];
    for e in wrong {
        assert_eq!(e.kind(), ErrorKind::WrongKeyKind, "{e}");
    }
    // Refusals wrote nothing new.
    assert_eq!(ks.list().await.unwrap().len(), 3);
}

#[tokio::test]
async fn sealed_blobs_detect_every_change_and_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, ks) = fresh(dir.path()).await;
    ks.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    ks.generate(&label("seal-2"), KeyKind::Seal).await.unwrap();
    let l = label("seal");

    let blob = ks.seal(&l, b"share bytes", b"aad").await.unwrap();
    let twin = ks.seal(&l, b"share bytes", b"aad").await.unwrap();
    assert_ne!(blob, twin, "two seals of the same plaintext are identical");

    let e = ks.unseal(&l, &blob, b"other aad").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered, "{e}");
    let e = ks
        .unseal(&label("seal-2"), &blob, b"aad")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered, "{e}");

    let bytes = blob.as_bytes();
    for bit in 0..bytes.len() * 8 {
        let mut bad = bytes.to_vec();
        bad[bit / 8] ^= 1 << (bit % 8);
        let e = ks
            .unseal(&l, &SealedBlob::from_bytes(bad), b"aad")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Tampered, "bit {bit}: {e}");
    }
    for len in 0..bytes.len() {
        let e = ks
            .unseal(&l, &SealedBlob::from_bytes(bytes[..len].to_vec()), b"aad")
            .await
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Tampered | ErrorKind::Corrupt),
            "cut to {len}: {e}"
        );
    }
    let garbage = SealedBlob::from_bytes(vec![0xAB; 100]);
    let e = ks.unseal(&l, &garbage, b"aad").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered, "{e}");
    // Empty plaintext and empty AAD work too.
    let empty = ks.seal(&l, b"", b"").await.unwrap();
    assert!(ks.unseal(&l, &empty, b"").await.unwrap().is_empty());
}

#[tokio::test]
async fn destroy_removes_the_key_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let ks = open(&path).await.unwrap();
    let before = ks.public_key(&label("identity")).await.unwrap();
    ks.destroy(&label("identity")).await.unwrap();
    let e = ks
        .sign_secp256k1_prehash(&label("identity"), &[1; 32])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyNotFound);
    drop(ks);

    let ks = open(&path).await.unwrap();
    let labels: Vec<_> = ks
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.label)
        .collect();
    assert_eq!(labels, vec![label("tls"), label("seal")]);
    assert!(!fs::read_to_string(&path)
        .unwrap()
        .contains(&before.to_hex()));
    // The label is free again and gets a new key.
    let new = ks
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    assert_ne!(new.public_key, Some(before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_sign_and_generate_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let custody: Arc<dyn Custody> = Arc::new(open(&path).await.unwrap());
    let Some(PublicKey::Secp256k1(id_pk)) = custody
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.label == label("identity"))
        .and_then(|k| k.public_key)
    else {
        panic!("no identity key")
    };

    let mut tasks = Vec::new();
    for t in 0..8 {
        let custody = custody.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let d = digest(&format!("task {t} message {i}"));
                let sig = custody
                    .sign_secp256k1_prehash(&label("identity"), &d)
                    .await
                    .unwrap();
                assert_eq!(sig.recover(&d).unwrap(), id_pk);
            }
            // Concurrent writers: none may lose another's key.
            custody
                .generate(&label(&format!("extra-{t}")), KeyKind::Seal)
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    drop(custody);
    let ks = open(&path).await.unwrap();
    let labels: BTreeSet<_> = ks
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.label)
        .collect();
    assert_eq!(labels.len(), 11, "{labels:?}");
}

#[tokio::test]
async fn info_and_health_describe_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let ks = open(&path).await.unwrap();
    let info = ks.info().await.unwrap();
    assert_eq!(info.backend, sbtc_custody::BackendKind::Keystore);
    assert_eq!(info.manufacturer, "sbtc-hsm-signer");
    assert_eq!(info.model, "encrypted keystore file");
    assert_eq!(info.serial, read_json(&path)["id"].as_str().unwrap());
    assert_eq!(info.serial.len(), 32);
    assert!(
        info.version.starts_with("format 2, generation 4"),
        "{}",
        info.version
    );
    let caps = &info.capabilities;
    assert!(caps.secp256k1 && caps.p256 && caps.seal && caps.key_backup);
    assert!(caps.seal_method.contains("XChaCha20-Poly1305"));
    assert!(caps.max_concurrency >= 1);
    // The serial is the file's, stable across opens and writes.
    ks.destroy(&label("tls")).await.unwrap();
    assert_eq!(
        open(&path).await.unwrap().info().await.unwrap().serial,
        info.serial
    );

    // Health is cheap: on an unchanged file it is a `stat`, never a re-read; after another
    // writer changed the file, it reads and verifies it once.
    let reloads = ks.reloads();
    for _ in 0..10 {
        let health = ks.health().await.unwrap();
        assert!(health.ok, "{health:?}");
    }
    assert_eq!(ks.reloads(), reloads, "health re-read an unchanged file");
    let other = open(&path).await.unwrap();
    other.generate(&label("tls"), KeyKind::P256).await.unwrap();
    assert!(ks.health().await.unwrap().ok);
    assert!(ks.health().await.unwrap().ok);
    assert_eq!(
        ks.reloads(),
        reloads + 1,
        "one re-read after an outside change"
    );

    fs::remove_file(&path).unwrap();
    let health = ks.health().await.unwrap();
    assert!(!health.ok);
    assert!(health.detail.contains("gone"), "{}", health.detail);
}

// ---------------------------------------------------------------------------------------------
// Damaged files: each its own error, no panic, no change to the file.

#[tokio::test]
async fn wrong_passphrase_is_auth_failed() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let e = open_fails(&path, "correct horse battery stapler").await;
    assert_eq!(e.kind(), ErrorKind::AuthFailed, "{e}");
    assert!(e.to_string().contains("does not unlock"), "{e}");
}

#[tokio::test]
async fn truncated_files_are_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let full = fs::read(&path).unwrap();
    for cut in [0, 1, 40, full.len() / 2, full.len() - 3, full.len() - 2] {
        fs::write(&path, &full[..cut]).unwrap();
        let e = open_fails(&path, PASS).await;
        assert_eq!(e.kind(), ErrorKind::Truncated, "cut at {cut}: {e}");
        assert!(e.to_string().contains("keystore.json"), "{e}");
    }
}

#[tokio::test]
async fn corrupted_files_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let good = fs::read(&path).unwrap();
    let restore = || fs::write(&path, &good).unwrap();

    fs::write(&path, b"\x7fELF\x02\x01\x01 not json at all").unwrap();
    let e = open_fails(&path, PASS).await;
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");

    restore();
    edit_json(&path, |d| d["format"] = "tmkms-softsign".into());
    let e = open_fails(&path, PASS).await;
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(
        e.to_string().contains("not an sbtc-hsm-signer keystore"),
        "{e}"
    );

    restore();
    edit_json(&path, |d| {
        d["keys"][0]["ciphertext"] = "zz".repeat(48).into()
    });
    let e = open_fails(&path, PASS).await;
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("keys[0].ciphertext"), "{e}");

    restore();
    edit_json(&path, |d| d["version"] = 3.into());
    let e = open_fails(&path, PASS).await;
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(
        e.to_string().contains("written by a newer sbtc-hsm-signer"),
        "{e}"
    );
    assert!(e.next_step().contains("upgrade"), "{e}");

    restore();
    edit_json(&path, |d| d["keys"][1]["kind"] = "rsa".into());
    let e = open_fails(&path, PASS).await;
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");

    // A hostile file asking Argon2 for 4 TiB is refused before any allocation.
    restore();
    edit_json(&path, |d| d["kdf"]["memory_kib"] = u32::MAX.into());
    let started = Instant::now();
    let e = open_fails(&path, PASS).await;
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("4 GiB"), "{e}");
    assert!(started.elapsed().as_secs() < 2);
    restore();
    edit_json(&path, |d| d["kdf"]["iterations"] = 1_000_000.into());
    let e = open_fails(&path, PASS).await;
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");

    restore();
    open(&path).await.unwrap();
}

#[tokio::test]
async fn tampered_files_are_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    open(&path)
        .await
        .unwrap()
        .generate(&label("identity-2"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let good = fs::read(&path).unwrap();

    type Edit = Box<dyn Fn(&mut Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "one hex digit of an entry ciphertext",
            Box::new(|d| {
                let ct = d["keys"][0]["ciphertext"].as_str().unwrap().to_owned();
                let mut chars: Vec<char> = ct.chars().collect();
                chars[20] = other_hex_digit(chars[20]);
                d["keys"][0]["ciphertext"] = chars.into_iter().collect::<String>().into();
            }),
        ),
        (
            "an entry nonce",
            Box::new(|d| d["keys"][2]["nonce"] = "00".repeat(24).into()),
        ),
        (
            "a label",
            Box::new(|d| d["keys"][1]["label"] = "tls-backup".into()),
        ),
        (
            "a deleted entry",
            Box::new(|d| {
                d["keys"].as_array_mut().unwrap().remove(1);
            }),
        ),
        (
            "two entries swapped",
            Box::new(|d| d["keys"].as_array_mut().unwrap().swap(0, 1)),
        ),
        (
            "public keys swapped between two secp256k1 keys",
            Box::new(|d| {
                let a = d["keys"][0]["public_key"].clone();
                d["keys"][0]["public_key"] = d["keys"][3]["public_key"].clone();
                d["keys"][3]["public_key"] = a;
            }),
        ),
        (
            "a duplicated entry",
            Box::new(|d| {
                let first = d["keys"][0].clone();
                d["keys"].as_array_mut().unwrap().push(first);
            }),
        ),
        (
            "the file id",
            Box::new(|d| d["id"] = "ab".repeat(16).into()),
        ),
        (
            "the MAC",
            Box::new(|d| {
                let mac = d["mac"].as_str().unwrap().to_owned();
                let flipped = format!(
                    "{}{}",
                    other_hex_digit(mac.chars().next().unwrap()),
                    &mac[1..]
                );
                d["mac"] = flipped.into();
            }),
        ),
    ];
    for (what, edit) in edits {
        fs::write(&path, &good).unwrap();
        edit_json(&path, edit);
        let e = open_fails(&path, PASS).await;
        assert_eq!(e.kind(), ErrorKind::Tampered, "{what}: {e}");
        assert!(e.next_step().contains("backup"), "{what}: {e}");
    }
}

#[tokio::test]
async fn no_single_bit_change_opens_or_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ks) = fresh(dir.path()).await;
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    drop(ks);
    let good = fs::read(&path).unwrap();
    // Every third byte keeps the run short; the stride hits every field.
    for i in (0..good.len()).step_by(3) {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        let e = open_fails(&path, PASS).await;
        assert!(
            matches!(
                e.kind(),
                ErrorKind::AuthFailed
                    | ErrorKind::Corrupt
                    | ErrorKind::Tampered
                    // A flipped closing quote makes the last string run to the end of the file.
                    | ErrorKind::Truncated
            ),
            "byte {i}: {e}"
        );
    }
}

#[tokio::test]
async fn changes_while_running_are_caught_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let ks = open(&path).await.unwrap();
    let good = fs::read(&path).unwrap();
    edit_json(&path, |d| d["keys"][0]["label"] = "identity-x".into());
    let e = ks
        .sign_secp256k1_prehash(&label("identity"), &[3; 32])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered, "{e}");
    assert_eq!(e.key_label(), Some("identity"));
    let e = ks.generate(&label("new"), KeyKind::Seal).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered, "{e}");
    assert!(
        !fs::read_to_string(&path).unwrap().contains("\"new\""),
        "wrote over a tampered file"
    );
    assert!(!ks.health().await.unwrap().ok);
    fs::write(&path, &good).unwrap();
    ks.sign_secp256k1_prehash(&label("identity"), &[3; 32])
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Permissions, creation, KDF settings.

#[tokio::test]
async fn a_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let e = open_fails(&path, PASS).await;
    assert_eq!(e.kind(), ErrorKind::SecretUnavailable, "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert_eq!(mode(&path), 0o644, "the refusal changed the mode");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    open(&path).await.unwrap();
}

#[tokio::test]
async fn created_files_are_0600_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("state/keys");
    let (path, ks) = fresh(&nested).await;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&nested), 0o700);
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o600, "a rewrite lost the mode");

    let before = fs::read(&path).unwrap();
    let e =
        Keystore::create_with_passphrase(&path, &pass("other"), KdfParams::insecure_for_tests())
            .await
            .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyExists, "{e}");
    assert_eq!(fs::read(&path).unwrap(), before);

    // Only the keystore, its lock file and its rollback mark: no temp files left behind.
    let names: BTreeSet<_> = fs::read_dir(&nested)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "keystore.json".to_owned(),
            "keystore.json.lock".to_owned(),
            "keystore.json.state".to_owned()
        ])
    );
}

#[tokio::test]
async fn opening_a_missing_file_does_not_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.json");
    let e = open(&path).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("no keystore file"), "{e}");
    assert!(!path.exists());
}

#[tokio::test]
async fn default_kdf_is_at_least_64_mib_and_3_passes_and_is_recorded() {
    let d = KdfParams::default();
    assert!(d.memory_kib() >= 64 * 1024 && d.iterations() >= 3, "{d:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.json");
    let ks = Keystore::create_with_passphrase(&path, &pass(PASS), KdfParams::default())
        .await
        .unwrap();
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    assert_eq!(ks.kdf_params(), d);
    let json = read_json(&path);
    assert_eq!(json["kdf"]["algorithm"], "argon2id");
    assert!(json["kdf"]["memory_kib"].as_u64().unwrap() >= 65536);
    assert!(json["kdf"]["iterations"].as_u64().unwrap() >= 3);
    drop(ks);
    let ks = open(&path).await.unwrap();
    assert_eq!(ks.kdf_params(), d);
    assert_eq!(ks.list().await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Config and several processes.

#[test]
fn config_parses_and_rejects_unknown_fields_and_weak_kdf() {
    let text = r#"
        path = "/var/lib/sbtc/keystore.json"
        passphrase_credential = "keystore-passphrase"
        [kdf]
        memory_kib = 131072
        iterations = 4
    "#;
    let config: Config = toml::from_str(text).unwrap();
    assert_eq!(
        config.passphrase_source().unwrap(),
        SecretSource::Credential("keystore-passphrase".into())
    );
    let kdf = config.kdf_params().unwrap();
    assert_eq!(
        (kdf.memory_kib(), kdf.iterations(), kdf.parallelism()),
        (131072, 4, 1)
    );

    let minimal: Config = toml::from_str("path = \"k.json\"\npassphrase_prompt = true").unwrap();
    assert_eq!(minimal.kdf_params().unwrap(), KdfParams::default());

    let typo = toml::from_str::<Config>("path = \"k.json\"\npasphrase_env = \"X\"");
    assert!(typo.unwrap_err().to_string().contains("pasphrase_env"));
    let kdf_typo = toml::from_str::<Config>("path = \"k\"\n[kdf]\nmemory = 1");
    let err = kdf_typo.unwrap_err().to_string();
    assert!(err.contains("unknown field `memory`"), "{err}");

    let weak: Config = toml::from_str(
        "path = \"k\"\npassphrase_env = \"P\"\n[kdf]\nmemory_kib = 256\niterations = 1",
    )
    .unwrap();
    let e = weak.kdf_params().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("insecure_test_kdf"), "{e}");
    let test_only: Config = toml::from_str(
        "path = \"k\"\npassphrase_env = \"P\"\n[kdf]\nmemory_kib = 256\niterations = 1\ninsecure_test_kdf = true",
    )
    .unwrap();
    assert_eq!(
        test_only.kdf_params().unwrap(),
        KdfParams::insecure(256, 1, 1).unwrap()
    );

    let none: Config = toml::from_str("path = \"k\"").unwrap();
    assert_eq!(
        none.passphrase_source().unwrap_err().kind(),
        ErrorKind::Config
    );
    let two: Config =
        toml::from_str("path = \"k\"\npassphrase_env = \"P\"\npassphrase_prompt = true").unwrap();
    assert_eq!(
        two.passphrase_source().unwrap_err().kind(),
        ErrorKind::Config
    );
}

#[tokio::test]
async fn config_with_a_passphrase_file_creates_and_opens() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("passphrase");
    fs::write(&secret, format!("{PASS}\n")).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = Config::new(
        dir.path().join("ks.json"),
        SecretSource::File(secret.clone()),
    );
    config.kdf.memory_kib = 256;
    config.kdf.iterations = 1;
    config.kdf.insecure_test_kdf = true;

    let ks = Keystore::create(&config).await.unwrap();
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    drop(ks);
    let ks = sbtc_custody_keystore::open(&config).await.unwrap();
    assert_eq!(ks.list().await.unwrap().len(), 1);
    // The same passphrase through the explicit API: the trailing newline was dropped.
    open(&config.path).await.unwrap();

    let e = Keystore::create(&config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyExists, "{e}");

    fs::set_permissions(&secret, fs::Permissions::from_mode(0o640)).unwrap();
    let e = sbtc_custody_keystore::open(&config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SecretUnavailable, "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");

    // Without insecure_test_kdf, test-strength settings are refused before anything is written.
    let mut weak = config.clone();
    weak.path = dir.path().join("weak.json");
    weak.kdf.insecure_test_kdf = false;
    let e = Keystore::create(&weak).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(!weak.path.exists());
}

#[tokio::test]
async fn two_handles_on_one_file_keep_each_others_writes() {
    // Two opens of one file stand in for the running signer and a `keys` command.
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let signer = open(&path).await.unwrap();
    let tool = open(&path).await.unwrap();

    tool.generate(&label("from-tool"), KeyKind::P256)
        .await
        .unwrap();
    signer
        .generate(&label("from-signer"), KeyKind::Seal)
        .await
        .unwrap();
    let labels: BTreeSet<_> = tool
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.label)
        .collect();
    assert!(labels.contains(&label("from-tool")) && labels.contains(&label("from-signer")));

    // A key destroyed by the tool is gone for the signer at once, not after a restart.
    tool.destroy(&label("identity")).await.unwrap();
    let e = signer
        .sign_secp256k1_prehash(&label("identity"), &[5; 32])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyNotFound, "{e}");
    assert_eq!(open(&path).await.unwrap().list().await.unwrap().len(), 4);
}

#[tokio::test]
async fn nothing_printed_reveals_the_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let ks = open(&path).await.unwrap();
    let debug = format!("{ks:?}");
    assert!(
        debug.contains("keystore.json") && !debug.contains(PASS),
        "{debug}"
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.contains(PASS));
}

#[tokio::test]
async fn a_symlinked_keystore_stays_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let real = populated(&dir.path().join("real")).await;
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let ks = open(&link).await.unwrap();
    ks.generate(&label("via-link"), KeyKind::Seal)
        .await
        .unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::read_to_string(&real).unwrap().contains("via-link"));
}

#[tokio::test]
async fn an_empty_passphrase_is_refused_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ks.json");
    let e = Keystore::create_with_passphrase(&path, &pass(""), KdfParams::insecure_for_tests())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(!path.exists());
}
