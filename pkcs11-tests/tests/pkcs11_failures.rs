//! PKCS#11 failure handling against a real SoftHSM2 token (or `PKCS11_MODULE`): wrong PIN,
//! missing token, wrong module, keys that could leave the token, lost sessions, concurrency,
//! and keys that outlive the backend.

use std::sync::Arc;

use pkcs11_tests::softhsm::{softhsm, token, TestToken};
use sbtc_custody::{Custody, ErrorKind, KeyKind, KeyLabel, PublicKey, SealedBlob};
use sbtc_custody_pkcs11::{
    close_all_sessions,
    cryptoki::{
        error::{Error as CkError, RvError},
        mechanism::Mechanism,
        object::{Attribute, AttributeType, ObjectClass},
        session::UserType,
        types::AuthPin,
    },
    load_module, Config,
};
use sha2::{Digest, Sha256};

fn digest(msg: &str) -> [u8; 32] {
    Sha256::digest(msg.as_bytes()).into()
}

fn secp_key(pk: PublicKey) -> secp256k1::PublicKey {
    match pk {
        PublicKey::Secp256k1(k) => k,
        other => panic!("expected a secp256k1 key, got {other:?}"),
    }
}

/// A PIN file holding `pin`, mode 0600, in the fixture's scratch directory.
fn pin_file(name: &str, pin: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = softhsm().dir().expect("SoftHSM2 fixture directory");
    let path = dir.join(format!("{name}.pin"));
    std::fs::write(&path, pin).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn wrong_pin_is_auth_failed_and_the_pin_never_shows() {
    let t = token();
    if t.vendor {
        eprintln!("skipped on a vendor module: a wrong PIN counts towards locking the token");
        return;
    }
    let wrong = "wrong-pin-48213";
    let mut config = t.config();
    config.pin_file = Some(pin_file("wrong-pin", wrong));
    let err = t.open_with(&config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(wrong), "the PIN leaked: {shown}");
    assert!(!shown.contains(&t.user_pin), "the real PIN leaked: {shown}");
    assert!(shown.contains("CKR_PIN_INCORRECT"), "{shown}");
    assert!(
        shown.contains("wrong-pin.pin"),
        "names the PIN file: {shown}"
    );

    // The right PIN still works afterwards.
    t.open();
}

#[test]
fn a_missing_token_lists_the_tokens_found() {
    let t = token();
    let mut config = t.config();
    config.token_label = Some("no-such-token".into());
    let err = t.open_with(&config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenNotFound, "{err}");
    let shown = err.to_string();
    assert!(shown.contains("no-such-token"), "{shown}");
    assert!(
        shown.contains(&format!("label '{}'", t.token_label)),
        "lists the real tokens: {shown}"
    );
    assert!(shown.contains("serial '"), "lists serials: {shown}");

    // A serial that matches no token is reported the same way.
    let mut config = t.config();
    config.token_serial = Some("0000000000000000".into());
    let err = t.open_with(&config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TokenNotFound, "{err}");
}

#[test]
fn a_wrong_module_path_is_module_load_naming_the_path() {
    let t = token();
    let mut config: Config = t.config();
    config.module = "/opt/vendor/lib/libmissing-pkcs11.so".into();
    let err = t.open_with(&config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModuleLoad, "{err}");
    assert!(
        err.to_string()
            .contains("/opt/vendor/lib/libmissing-pkcs11.so"),
        "{err}"
    );

    // A file that exists but is no shared library.
    let not_a_library = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_library.path(), "just text").unwrap();
    let not_a_library = not_a_library.path().to_path_buf();
    config.module = not_a_library.clone();
    let err = t.open_with(&config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModuleLoad, "{err}");
    assert!(
        err.to_string()
            .contains(&not_a_library.display().to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extractable_key_planted_by_pkcs11_tool_is_refused() {
    let t = token();
    let extractable = t.key_label("planted-extractable");
    let plain = t.key_label("planted-plain");
    for (label, extra) in [(&extractable, Some("--extractable")), (&plain, None)] {
        let mut args = vec![
            "--keypairgen",
            "--key-type",
            "EC:secp256k1",
            "--label",
            label.as_str(),
        ];
        args.extend(extra);
        t.pkcs11_tool_login(&args);
    }
    let backend = t.open();

    let err = backend
        .sign_secp256k1_prehash(&extractable, &digest("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyPolicy, "{err}");
    assert!(err.to_string().contains("CKA_EXTRACTABLE"), "{err}");
    assert_eq!(err.key_label(), Some(extractable.as_str()));
    let err = backend.public_key(&extractable).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyPolicy, "{err}");

    // The same kind of key without --extractable is used: the refusal is about the attribute.
    let pk = secp_key(backend.public_key(&plain).await.unwrap());
    let d = digest("plain");
    let sig = backend.sign_secp256k1_prehash(&plain, &d).await.unwrap();
    assert!(sig.verify(&d, &pk));

    for label in [&extractable, &plain] {
        backend.destroy(label).await.unwrap();
    }
}

/// Plants keys through the shared module context, as a careless tool could. False if the token
/// refuses to create such keys at all (some vendor HSMs in FIPS mode do).
fn plant_unsafe_keys(t: &TestToken, ec_label: &KeyLabel, aes_label: &KeyLabel) -> bool {
    let ctx = load_module(&t.module).unwrap();
    let session = ctx.open_rw_session(t.slot()).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(t.user_pin.clone()))) {
        Ok(()) => {}
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    let ec = ec_label.as_str().as_bytes().to_vec();
    let pair = session.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::EcParams(vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]),
            Attribute::Label(ec.clone()),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(ec),
        ],
    );
    let secret = session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::ValueLen(32.into()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(aes_label.as_str().as_bytes().to_vec()),
        ],
    );
    match (pair, secret) {
        (Ok(_), Ok(_)) => true,
        (pair, secret) if t.vendor => {
            eprintln!("the token refuses unsafe keys ({pair:?}, {secret:?}); skipped");
            false
        }
        (pair, secret) => panic!("SoftHSM2 refused to plant keys: {pair:?} {secret:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sensitive_or_extractable_keys_made_through_raw_pkcs11_are_refused() {
    let t = token();
    let ec = t.key_label("raw-nonsensitive");
    let aes = t.key_label("raw-extractable-aes");
    if !plant_unsafe_keys(&t, &ec, &aes) {
        return;
    }
    let backend = t.open();

    let err = backend
        .sign_secp256k1_prehash(&ec, &digest("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyPolicy, "{err}");
    assert!(err.to_string().contains("CKA_SENSITIVE is false"), "{err}");

    let err = backend.seal(&aes, b"share", b"aad").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyPolicy, "{err}");
    assert!(err.to_string().contains("CKA_EXTRACTABLE is true"), "{err}");

    for label in [&ec, &aes] {
        backend.destroy(label).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_keys_cannot_leave_the_token() {
    let t = token();
    let backend = t.open();
    let labels = [
        (t.key_label("attr-k1"), KeyKind::Secp256k1),
        (t.key_label("attr-p256"), KeyKind::P256),
        (t.key_label("attr-seal"), KeyKind::Seal),
    ];
    for (label, kind) in &labels {
        backend.generate(label, *kind).await.unwrap();
    }

    let ctx = load_module(&t.module).unwrap();
    let session = ctx.open_ro_session(t.slot()).unwrap();
    // The backend's sessions keep this process logged in.
    for (label, kind) in &labels {
        let class = match kind {
            KeyKind::Seal => ObjectClass::SECRET_KEY,
            _ => ObjectClass::PRIVATE_KEY,
        };
        let found = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_str().as_bytes().to_vec()),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "{label}");
        let attrs = session
            .get_attributes(
                found[0],
                &[
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
            .unwrap();
        for expected in [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::NeverExtractable(true),
        ] {
            assert!(
                attrs.contains(&expected),
                "{label}: {expected:?} in {attrs:?}"
            );
        }
        let usage = session
            .get_attributes(
                found[0],
                &[
                    AttributeType::Sign,
                    AttributeType::Decrypt,
                    AttributeType::Unwrap,
                    AttributeType::Derive,
                    AttributeType::Encrypt,
                    AttributeType::Wrap,
                ],
            )
            .unwrap();
        // Each key does one job: EC keys sign, the seal key encrypts and decrypts.
        let expected: &[Attribute] = match kind {
            KeyKind::Seal => &[
                Attribute::Sign(false),
                Attribute::Decrypt(true),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Encrypt(true),
                Attribute::Wrap(false),
            ],
            _ => &[
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
            ],
        };
        for e in expected {
            assert!(usage.contains(e), "{label}: {e:?} in {usage:?}");
        }
        // And the value itself cannot be read.
        let value = session
            .get_attributes(found[0], &[AttributeType::Value])
            .unwrap();
        assert!(value.is_empty(), "{label}: CKA_VALUE readable: {value:?}");
    }
    for (label, _) in &labels {
        backend.destroy(label).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_recovers_after_all_sessions_are_closed() {
    let t = token();
    let backend = Arc::new(t.open());
    let k1 = t.key_label("loss-k1");
    let p256 = t.key_label("loss-p256");
    let seal = t.key_label("loss-seal");
    let pk = secp_key(
        backend
            .generate(&k1, KeyKind::Secp256k1)
            .await
            .unwrap()
            .public_key
            .unwrap(),
    );
    let p256_pk = match backend
        .generate(&p256, KeyKind::P256)
        .await
        .unwrap()
        .public_key
    {
        Some(PublicKey::P256(k)) => k,
        other => panic!("{other:?}"),
    };
    backend.generate(&seal, KeyKind::Seal).await.unwrap();
    let sealed = backend.seal(&seal, b"dkg share", b"ctx").await.unwrap();

    // Warm the pool: several sessions and cached handles.
    let mut warm = Vec::new();
    for i in 0..4 {
        let b = Arc::clone(&backend);
        let l = k1.clone();
        warm.push(tokio::spawn(async move {
            b.sign_secp256k1_prehash(&l, &digest(&format!("warm {i}")))
                .await
        }));
    }
    for w in warm {
        w.await.unwrap().unwrap();
    }

    for round in 0..3 {
        // Through the shared context, as the test hook documented on the crate.
        close_all_sessions(&t.module, backend.slot()).unwrap();
        let d = digest(&format!("after loss {round}"));
        let sig = backend
            .sign_secp256k1_prehash(&k1, &d)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(sig.verify(&d, &pk));
        assert_eq!(sig.recover(&d).unwrap(), pk);
    }

    // Every pooled session is dead at once; concurrent callers all recover.
    backend.simulate_session_loss().unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let b = Arc::clone(&backend);
        let l = k1.clone();
        tasks.push(tokio::spawn(async move {
            let d = digest(&format!("concurrent after loss {i}"));
            (d, b.sign_secp256k1_prehash(&l, &d).await)
        }));
    }
    for task in tasks {
        let (d, sig) = task.await.unwrap();
        assert!(sig.unwrap().verify(&d, &pk));
    }

    backend.simulate_session_loss().unwrap();
    let d = digest("tls");
    let sig = backend.sign_p256_prehash(&p256, &d).await.unwrap();
    assert!(sig.verify(&d, &p256_pk));

    backend.simulate_session_loss().unwrap();
    let plain = backend.unseal(&seal, &sealed, b"ctx").await.unwrap();
    assert_eq!(plain.expose(), b"dkg share");

    backend.simulate_session_loss().unwrap();
    let health = backend.health().await.unwrap();
    assert!(health.ok, "{}", health.detail);

    for label in [&k1, &p256, &seal] {
        backend.destroy(label).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_elsewhere_in_the_process_is_recovered() {
    let t = token();
    let backend = t.open();
    let k1 = t.key_label("logout-k1");
    let pk = secp_key(
        backend
            .generate(&k1, KeyKind::Secp256k1)
            .await
            .unwrap()
            .public_key
            .unwrap(),
    );
    backend
        .sign_secp256k1_prehash(&k1, &digest("before"))
        .await
        .unwrap();

    // Login state is shared by all sessions of the process: this logs the backend out too.
    let ctx = load_module(&t.module).unwrap();
    let other = ctx.open_ro_session(t.slot()).unwrap();
    other.logout().unwrap();

    let d = digest("after logout");
    let sig = backend.sign_secp256k1_prehash(&k1, &d).await.unwrap();
    assert!(sig.verify(&d, &pk));
    drop(other);
    backend.destroy(&k1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_tasks_sign_through_one_arc_dyn_custody() {
    let t = token();
    let custody: Arc<dyn Custody> = Arc::new(t.open());
    let label = t.key_label("concurrent");
    let pk = secp_key(
        custody
            .generate(&label, KeyKind::Secp256k1)
            .await
            .unwrap()
            .public_key
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for task in 0..8 {
        let c = Arc::clone(&custody);
        let l = label.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..10 {
                let d = digest(&format!("task {task} message {i}"));
                out.push((d, c.sign_secp256k1_prehash(&l, &d).await));
            }
            out
        }));
    }
    let mut signed = 0;
    for task in tasks {
        for (d, sig) in task.await.unwrap() {
            let sig = sig.unwrap();
            assert!(sig.verify(&d, &pk));
            assert_eq!(sig.recover(&d).unwrap(), pk);
            signed += 1;
        }
    }
    assert_eq!(signed, 80);
    custody.destroy(&label).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_dropping_and_reopening_the_backend() {
    let t = token();
    let k1 = t.key_label("survive-k1");
    let p256 = t.key_label("survive-p256");
    let seal = t.key_label("survive-seal");
    let (k1_pk, p256_pk, sealed) = {
        let backend = t.open();
        let k1_pk = backend
            .generate(&k1, KeyKind::Secp256k1)
            .await
            .unwrap()
            .public_key;
        let p256_pk = backend
            .generate(&p256, KeyKind::P256)
            .await
            .unwrap()
            .public_key;
        backend.generate(&seal, KeyKind::Seal).await.unwrap();
        let sealed = backend.seal(&seal, b"kept", b"aad").await.unwrap();
        (k1_pk.unwrap(), p256_pk.unwrap(), sealed)
    };

    let backend = t.open();
    assert_eq!(backend.public_key(&k1).await.unwrap(), k1_pk);
    assert_eq!(backend.public_key(&p256).await.unwrap(), p256_pk);
    let d = digest("after reopen");
    let sig = backend.sign_secp256k1_prehash(&k1, &d).await.unwrap();
    assert!(sig.verify(&d, &secp_key(k1_pk)));
    let plain = backend.unseal(&seal, &sealed, b"aad").await.unwrap();
    assert_eq!(plain.expose(), b"kept");

    let listed = backend.list().await.unwrap();
    for (label, kind, pk) in [
        (&k1, KeyKind::Secp256k1, Some(k1_pk)),
        (&p256, KeyKind::P256, Some(p256_pk)),
        (&seal, KeyKind::Seal, None),
    ] {
        let entry = listed
            .iter()
            .find(|k| &k.label == label)
            .unwrap_or_else(|| panic!("{label} missing from {listed:?}"));
        assert_eq!(entry.kind, kind);
        assert_eq!(entry.public_key, pk);
    }
    for label in [&k1, &p256, &seal] {
        backend.destroy(label).await.unwrap();
    }
    assert_eq!(
        backend.public_key(&k1).await.unwrap_err().kind(),
        ErrorKind::KeyNotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_bit_in_a_sealed_blob_is_tampering() {
    let t = token();
    let backend = t.open();
    let seal = t.key_label("tamper-seal");
    backend.generate(&seal, KeyKind::Seal).await.unwrap();
    let sealed = backend
        .seal(&seal, b"wsts share bytes", b"dkg-7")
        .await
        .unwrap();
    let again = backend
        .seal(&seal, b"wsts share bytes", b"dkg-7")
        .await
        .unwrap();
    assert_ne!(sealed, again, "a fresh IV every time");
    // Format byte, IV, ciphertext and tag (SoftHSM2 answers CKR_GENERAL_ERROR for a bad tag).
    let bytes = sealed.as_bytes();
    assert_eq!(bytes.len(), 1 + 12 + 16 + 16);
    for i in 0..bytes.len() {
        let mut bad = bytes.to_vec();
        bad[i] ^= 1 << (i % 8);
        let err = backend
            .unseal(&seal, &SealedBlob::from_bytes(bad), b"dkg-7")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tampered, "byte {i}: {err}");
    }
    let err = backend.unseal(&seal, &sealed, b"dkg-8").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tampered, "{err}");
    let short = SealedBlob::from_bytes(bytes[..20].to_vec());
    let err = backend.unseal(&seal, &short, b"dkg-7").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Corrupt | ErrorKind::Tampered),
        "{err}"
    );
    backend.destroy(&seal).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reports_the_token_and_its_mechanisms() {
    let t = token();
    let backend = t.open();
    let info = backend.info().await.unwrap();
    assert!(info.capabilities.secp256k1 && info.capabilities.p256 && info.capabilities.seal);
    assert_eq!(info.capabilities.max_concurrency, t.config().sessions);
    assert!(!info.serial.is_empty());
    if !t.vendor {
        assert_eq!(info.manufacturer, "SoftHSM project");
        assert_eq!(info.model, "SoftHSM v2");
        assert!(info.version.contains("firmware 2."), "{}", info.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_kinds_and_missing_labels() {
    let t = token();
    let backend = t.open();
    let seal = t.key_label("kind-seal");
    let p256 = t.key_label("kind-p256");
    backend.generate(&seal, KeyKind::Seal).await.unwrap();
    backend.generate(&p256, KeyKind::P256).await.unwrap();

    let err = backend
        .sign_secp256k1_prehash(&p256, &digest("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongKeyKind, "{err}");
    let err = backend
        .sign_secp256k1_prehash(&seal, &digest("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongKeyKind, "{err}");
    let err = backend.seal(&p256, b"x", b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongKeyKind, "{err}");
    let err = backend.public_key(&seal).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongKeyKind, "{err}");

    let err = backend
        .generate(&p256, KeyKind::Secp256k1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyExists, "{err}");

    let missing = t.key_label("kind-missing");
    let err = backend
        .sign_p256_prehash(&missing, &digest("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyNotFound, "{err}");
    assert_eq!(
        backend.destroy(&missing).await.unwrap_err().kind(),
        ErrorKind::KeyNotFound
    );
    for label in [&seal, &p256] {
        backend.destroy(label).await.unwrap();
    }
}

/// Logs a raw session of the shared module context in as the user (the login is shared by the
/// process, so "already logged in" is fine).
fn user_session(t: &TestToken) -> sbtc_custody_pkcs11::cryptoki::session::Session {
    let ctx = load_module(&t.module).unwrap();
    let session = ctx.open_rw_session(t.slot()).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(t.user_pin.clone()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    session
}

fn bool_attr(
    session: &sbtc_custody_pkcs11::cryptoki::session::Session,
    label: &KeyLabel,
    which: AttributeType,
) -> Option<bool> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_str().as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1, "{label}");
    session
        .get_attributes(found[0], &[which])
        .unwrap()
        .into_iter()
        .find_map(|a| match a {
            Attribute::Local(b)
            | Attribute::AlwaysSensitive(b)
            | Attribute::NeverExtractable(b) => Some(b),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_key_is_refused_unless_allow_imported_keys_is_set() {
    use sbtc_custody_pkcs11::cryptoki::object::KeyType;
    let t = token();
    let imported = t.key_label("imported-k1");
    let generated = t.key_label("generated-k1");

    // A secp256k1 key whose private value came from outside, as `C_CreateObject` imports it:
    // sensitive and non-extractable from now on, but a copy of the value exists (here, `secret`).
    let secret = secp256k1::SecretKey::new(&mut rand::thread_rng());
    let public = secret.public_key(secp256k1::SECP256K1);
    let params = vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
    let name = imported.as_str().as_bytes().to_vec();
    let mut point = vec![0x04, 0x41];
    point.extend_from_slice(&public.serialize_uncompressed());
    {
        let session = user_session(&t);
        let created = session.create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::EcParams(params.clone()),
            Attribute::Value(secret.secret_bytes().to_vec()),
            Attribute::Label(name.clone()),
        ]);
        if let Err(e) = created {
            assert!(t.vendor, "SoftHSM2 refused C_CreateObject: {e}");
            eprintln!("the token refuses imported private keys ({e}); skipped");
            return;
        }
        session
            .create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::EcParams(params),
                Attribute::EcPoint(point),
                Attribute::Label(name),
            ])
            .unwrap();
        // The token itself records where the key came from.
        assert_eq!(
            bool_attr(&session, &imported, AttributeType::Local),
            Some(false)
        );
    }

    let backend = t.open();
    backend
        .generate(&generated, KeyKind::Secp256k1)
        .await
        .unwrap();
    let err = backend
        .sign_secp256k1_prehash(&imported, &digest("imported"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyPolicy, "{err}");
    assert_eq!(err.key_label(), Some(imported.as_str()));
    let shown = err.to_string();
    for needle in [
        imported.as_str(),
        "CKA_LOCAL is false",
        "generate the key on the token",
        "allow_imported_keys = true",
    ] {
        assert!(shown.contains(needle), "missing {needle:?}: {shown}");
    }
    assert!(
        !shown.contains(&hex::encode(secret.secret_bytes())),
        "{shown}"
    );
    let err = backend.public_key(&imported).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyPolicy, "{err}");
    // A key generated on the same token by the same backend is used: the refusal is the origin.
    let d = digest("generated");
    let pk = secp_key(backend.public_key(&generated).await.unwrap());
    assert!(backend
        .sign_secp256k1_prehash(&generated, &d)
        .await
        .unwrap()
        .verify(&d, &pk));

    // The operator says the import was deliberate: the key is used, and it is the imported one.
    let mut config = t.config();
    config.allow_imported_keys = true;
    let lenient = t.open_with(&config).unwrap();
    assert_eq!(
        lenient.public_key(&imported).await.unwrap(),
        PublicKey::Secp256k1(public)
    );
    let d = digest("imported, allowed");
    let sig = lenient.sign_secp256k1_prehash(&imported, &d).await.unwrap();
    assert!(sig.verify(&d, &public));
    assert_eq!(sig.recover(&d).unwrap(), public);

    for label in [&imported, &generated] {
        lenient.destroy(label).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_once_extractable_or_readable_is_refused_unless_allowed() {
    let t = token();
    let was_extractable = t.key_label("was-extractable");
    let was_readable = t.key_label("was-readable");
    {
        let session = user_session(&t);
        for (label, sensitive, extractable) in [
            (&was_extractable, true, true),
            (&was_readable, false, false),
        ] {
            let name = label.as_str().as_bytes().to_vec();
            let made = session.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::Verify(true),
                    Attribute::EcParams(vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]),
                    Attribute::Label(name.clone()),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(sensitive),
                    Attribute::Extractable(extractable),
                    Attribute::Sign(true),
                    Attribute::Label(name),
                ],
            );
            let (_, private) = match made {
                Ok(pair) => pair,
                Err(e) if t.vendor => {
                    eprintln!("the token refuses such keys ({e}); skipped");
                    return;
                }
                Err(e) => panic!("{e}"),
            };
            // Locked down afterwards: sensitive and non-extractable from now on.
            let lock_down = if extractable {
                Attribute::Extractable(false)
            } else {
                Attribute::Sensitive(true)
            };
            session.update_attributes(private, &[lock_down]).unwrap();
            assert_eq!(bool_attr(&session, label, AttributeType::Local), Some(true));
        }
    }

    let backend = t.open();
    for (label, attribute) in [
        (&was_extractable, "CKA_NEVER_EXTRACTABLE is false"),
        (&was_readable, "CKA_ALWAYS_SENSITIVE is false"),
    ] {
        let err = backend
            .sign_secp256k1_prehash(label, &digest("x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyPolicy, "{err}");
        assert!(err.to_string().contains(attribute), "{err}");
        assert!(err.to_string().contains("allow_imported_keys"), "{err}");
    }

    let mut config = t.config();
    config.allow_imported_keys = true;
    let lenient = t.open_with(&config).unwrap();
    for label in [&was_extractable, &was_readable] {
        let pk = secp_key(lenient.public_key(label).await.unwrap());
        let d = digest(label.as_str());
        assert!(lenient
            .sign_secp256k1_prehash(label, &d)
            .await
            .unwrap()
            .verify(&d, &pk));
        lenient.destroy(label).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_changed_under_the_backend_is_tried_once_then_never_again() {
    let t = token();
    if t.vendor {
        eprintln!("skipped on a vendor module: the test changes the token's user PIN");
        return;
    }
    let backend = Arc::new(t.open());
    let k1 = t.key_label("pin-k1");
    let pk = secp_key(
        backend
            .generate(&k1, KeyKind::Secp256k1)
            .await
            .unwrap()
            .public_key
            .unwrap(),
    );
    let at_start = backend.login_attempts();
    assert_eq!(at_start, 1, "one C_Login at open");

    // The security officer's tooling rotates the user PIN (C_SetPIN in another session).
    let new_pin = "rotated-pin-90531";
    {
        let session = user_session(&t);
        session
            .set_pin(
                &AuthPin::from(t.user_pin.clone()),
                &AuthPin::from(new_pin.to_owned()),
            )
            .unwrap();
    }
    // The token keeps this process logged in, so signing goes on for now.
    let d = digest("still logged in");
    assert!(backend
        .sign_secp256k1_prehash(&k1, &d)
        .await
        .unwrap()
        .verify(&d, &pk));
    assert_eq!(backend.login_attempts(), at_start);

    // The sessions go (a device reset): the backend must log in again, with the PIN it holds.
    // Eight callers at once make one C_Login between them.
    backend.simulate_session_loss().unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let b = Arc::clone(&backend);
        let l = k1.clone();
        tasks.push(tokio::spawn(async move {
            b.sign_secp256k1_prehash(&l, &digest(&format!("after rotation {i}")))
                .await
        }));
    }
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    }
    assert_eq!(
        backend.login_attempts(),
        at_start + 1,
        "one wrong C_Login after the rotation, not one per caller"
    );

    // From now on every call fails at once, and never logs in again.
    for round in 0..5 {
        let err = backend
            .sign_secp256k1_prehash(&k1, &digest(&format!("later {round}")))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
        let shown = format!("{err} {err:?}");
        for needle in [
            "refused the PIN",
            "CKR_PIN_INCORRECT",
            "fix the PIN source",
            "restart",
        ] {
            assert!(shown.contains(needle), "missing {needle:?}: {shown}");
        }
        assert!(!shown.contains(&t.user_pin), "the old PIN leaked: {shown}");
        assert!(!shown.contains(new_pin), "the new PIN leaked: {shown}");
        assert_eq!(
            backend.public_key(&k1).await.unwrap_err().kind(),
            ErrorKind::AuthFailed
        );
        assert_eq!(
            backend.list().await.unwrap_err().kind(),
            ErrorKind::AuthFailed
        );
        let health = backend.health().await.unwrap();
        assert!(!health.ok && health.detail.contains("refused the PIN"));
    }
    assert_eq!(backend.login_attempts(), at_start + 1, "no further C_Login");

    // A backend opened with the new PIN works: the token was never locked.
    let mut config = t.config();
    config.pin_file = Some(pin_file("rotated", new_pin));
    let fixed = t.open_with(&config).unwrap();
    let d = digest("after restart");
    assert!(fixed
        .sign_secp256k1_prehash(&k1, &d)
        .await
        .unwrap()
        .verify(&d, &pk));
    fixed.destroy(&k1).await.unwrap();
}
