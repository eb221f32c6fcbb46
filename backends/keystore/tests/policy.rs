//! What the keystore refuses on purpose: an older copy of the file put back (rollback), a weak
//! passphrase for a new production keystore, and a test-strength file without
//! `insecure_test_kdf = true`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use sbtc_custody::{Custody, Error, ErrorKind, KeyKind, KeyLabel, SecretSource, SecretString};
use sbtc_custody_keystore::{Config, KdfParams, Keystore, OpenOptions};
use serde_json::Value;

const PASS: &str = "orbit glacier mustard velvet quarry";

fn pass(s: &str) -> SecretString {
    SecretString::new(s.to_owned())
}

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

async fn create(path: &Path) -> Keystore {
    Keystore::create_with_passphrase(path, &pass(PASS), KdfParams::insecure_for_tests())
        .await
        .unwrap()
}

async fn open(path: &Path) -> Result<Keystore, Error> {
    Keystore::open_with_options(path, &pass(PASS), &OpenOptions::insecure_test()).await
}

fn state_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn state_of(keystore: &Path) -> PathBuf {
    let mut name = keystore.file_name().unwrap().to_os_string();
    name.push(".state");
    keystore.with_file_name(name)
}

/// Puts `copy` back as the keystore, as a restore from an old backup would.
fn put_back(path: &Path, copy: &[u8]) {
    fs::write(path, copy).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Opening must fail as a rollback and leave the keystore's bytes alone.
async fn open_rolled_back(path: &Path) -> Error {
    let before = fs::read(path).unwrap();
    let e = open(path).await.expect_err("the older copy opened");
    assert_eq!(fs::read(path).unwrap(), before, "opening changed the file");
    assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
    e
}

#[tokio::test]
async fn an_older_copy_put_back_after_a_new_key_is_refused_until_accepted_deliberately() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.json");
    let ks = create(&path).await;
    assert_eq!(ks.generation(), 1);
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let old = fs::read(&path).unwrap();
    ks.generate(&label("tls"), KeyKind::P256).await.unwrap();
    assert_eq!(ks.generation(), 3);
    assert_eq!(state_json(&state_of(&path))["generation"], 3);
    drop(ks);

    put_back(&path, &old);
    let e = open_rolled_back(&path).await;
    let shown = e.to_string();
    for needle in [
        "generation 2",
        "already used generation 3",
        "older copy of the file was put back",
        "put the newest copy",
        &format!("remove {}", state_of(&path).display()),
    ] {
        assert!(shown.contains(needle), "missing {needle:?}: {shown}");
    }
    assert!(!shown.contains(PASS), "{shown}");

    // The explicit operator step: remove the mark. The older copy opens, without the newer key,
    // and the mark starts again from it.
    fs::remove_file(state_of(&path)).unwrap();
    let ks = open(&path).await.unwrap();
    assert_eq!(ks.generation(), 2);
    let labels: Vec<_> = ks
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.label)
        .collect();
    assert_eq!(labels, vec![label("identity")]);
    assert_eq!(state_json(&state_of(&path))["generation"], 2);
}

#[tokio::test]
async fn an_older_copy_put_back_after_destroy_is_refused_also_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.json");
    let ks = create(&path).await;
    for (l, kind) in [("identity", KeyKind::Secp256k1), ("seal", KeyKind::Seal)] {
        ks.generate(&label(l), kind).await.unwrap();
    }
    let old = fs::read(&path).unwrap();
    ks.destroy(&label("identity")).await.unwrap();

    // The running signer notices at its next use, before it signs with the destroyed key.
    put_back(&path, &old);
    let e = ks
        .sign_secp256k1_prehash(&label("identity"), &[7; 32])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
    // Removing the mark under a running handle does not help: it remembers what it used.
    fs::remove_file(state_of(&path)).unwrap();
    let e = ks.list().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
    assert!(!ks.health().await.unwrap().ok);
    drop(ks);

    // A restart with the mark present refuses it too.
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = dir2.path().join("keystore.json");
    let ks = create(&path2).await;
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let old = fs::read(&path2).unwrap();
    ks.destroy(&label("identity")).await.unwrap();
    drop(ks);
    put_back(&path2, &old);
    open_rolled_back(&path2).await;
}

#[tokio::test]
async fn another_keystore_put_in_place_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.json");
    let first = create(&path).await;
    first
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    drop(first);
    let first_copy = fs::read(&path).unwrap();

    // The operator moves it away and starts anew (same passphrase); later the old file comes back.
    fs::rename(&path, dir.path().join("moved-away.json")).unwrap();
    let second = create(&path).await;
    drop(second);
    put_back(&path, &first_copy);
    let e = open_rolled_back(&path).await;
    assert!(
        e.to_string()
            .contains("another keystore file was put in place"),
        "{e}"
    );
}

#[tokio::test]
async fn the_mark_lives_where_state_path_says_and_catches_up_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/keystore.json");
    let state = dir.path().join("elsewhere/keystore.state");
    let secret = dir.path().join("passphrase");
    fs::write(&secret, PASS).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = Config::new(&path, SecretSource::File(secret));
    config.state_path = Some(state.clone());
    config.kdf =
        toml::from_str("memory_kib = 256\niterations = 1\ninsecure_test_kdf = true").unwrap();

    let ks = Keystore::create(&config).await.unwrap();
    assert_eq!(ks.state_path(), state);
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let old = fs::read(&path).unwrap();
    ks.generate(&label("tls"), KeyKind::P256).await.unwrap();
    drop(ks);
    assert!(!state_of(&path).exists(), "no mark at the default place");
    assert_eq!(state_json(&state)["generation"], 3);

    // A crash between writing the file and its mark leaves the mark behind: opening moves it up.
    let mut behind = state_json(&state);
    behind["generation"] = 2.into();
    fs::write(&state, serde_json::to_vec(&behind).unwrap()).unwrap();
    sbtc_custody_keystore::open(&config).await.unwrap();
    assert_eq!(state_json(&state)["generation"], 3);

    put_back(&path, &old);
    let e = sbtc_custody_keystore::open(&config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
    assert!(e.to_string().contains(&state.display().to_string()), "{e}");

    // A mark that cannot be read is not taken as no mark.
    fs::write(&state, b"{ not json").unwrap();
    let e = sbtc_custody_keystore::open(&config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("rollback mark"), "{e}");
}

#[tokio::test]
async fn a_weak_passphrase_is_refused_for_a_production_keystore() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.json");
    for weak in [
        "peer test passphrase",
        "Tr0ub4dor&3",
        "sbtc-signer-2024",
        "hunter2hunter2",
    ] {
        let e = Keystore::create_with_passphrase(&path, &pass(weak), KdfParams::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{weak}: {e}");
        let shown = format!("{e} {e:?}");
        assert!(shown.contains("too weak"), "{shown}");
        assert!(shown.contains("10^14 guesses or more"), "{shown}");
        assert!(shown.contains("four or more random words"), "{shown}");
        assert!(!shown.contains(weak), "the passphrase leaked: {shown}");
        assert!(
            !path.exists(),
            "a file was created for a refused passphrase"
        );
    }

    // Through the config and its passphrase file, the same.
    let secret = dir.path().join("passphrase");
    fs::write(&secret, "bench passphrase 3\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let config = Config::new(&path, SecretSource::File(secret));
    let e = Keystore::create(&config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("too weak"), "{e}");
    assert!(!path.exists());

    // A throwaway keystore with the test KDF takes any non-empty passphrase: its file opens
    // only with insecure_test_kdf = true (below).
    Keystore::create_with_passphrase(
        &path,
        &pass("peer test passphrase"),
        KdfParams::insecure_for_tests(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_test_kdf_file_opens_only_with_insecure_test_kdf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.json");
    create(&path)
        .await
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let before = fs::read(&path).unwrap();

    let e = Keystore::open_with_passphrase(&path, &pass(PASS))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let shown = e.to_string();
    for needle in [
        "test-strength Argon2id settings (256 KiB, 1 passes",
        "production floor is 65536 KiB and 3 passes",
        "insecure_test_kdf = true",
        "create a new keystore with production settings",
    ] {
        assert!(shown.contains(needle), "missing {needle:?}: {shown}");
    }
    assert_eq!(fs::read(&path).unwrap(), before);

    // Through the config: refused without the flag, opened with it.
    let secret = dir.path().join("passphrase");
    fs::write(&secret, PASS).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = Config::new(&path, SecretSource::File(secret));
    let e = sbtc_custody_keystore::open(&config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("insecure_test_kdf = true"), "{e}");
    config.kdf.insecure_test_kdf = true;
    let ks = sbtc_custody_keystore::open(&config).await.unwrap();
    assert_eq!(ks.list().await.unwrap().len(), 1);
}
