//! The custody contract on MockHsm, the yubihsm crate's software YubiHSM2.
//!
//! MockHsm does not enforce capabilities or domains; the tests here check what the backend itself
//! decides (kinds, policy, labels, sealing format) and read back what it asked the device for.

mod common;

use std::sync::Arc;

use common::{label, mock_backend, new_mock, raw_client};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sbtc_custody::{Custody, ErrorKind, KeyKind, PublicKey, SealedBlob};
use sbtc_custody_yubihsm::Options;
use sha2::{Digest, Sha256};
use yubihsm::{asymmetric, hmac, object, wrap, Capability, Domain};

fn digest(msg: &str) -> [u8; 32] {
    Sha256::digest(msg.as_bytes()).into()
}

const WRAP_KEY_ID: u16 = 0x00f0;

fn with_backup() -> Options {
    Options {
        backup_wrap_key_id: Some(WRAP_KEY_ID),
        ..Options::default()
    }
}

/// Puts a wrap key on the mock, as an operator would with yubihsm-shell.
fn plant_wrap_key(mock: &yubihsm::Connector) {
    raw_client(mock)
        .generate_wrap_key(
            WRAP_KEY_ID,
            "backup wrap".parse().unwrap(),
            Domain::DOM1,
            Capability::EXPORT_WRAPPED | Capability::IMPORT_WRAPPED,
            Capability::SIGN_ECDSA | Capability::SIGN_HMAC | Capability::EXPORTABLE_UNDER_WRAP,
            wrap::Algorithm::Aes256Ccm,
        )
        .unwrap();
}

fn object_info(mock: &yubihsm::Connector, l: &str, ty: object::Type) -> object::Info {
    let client = raw_client(mock);
    let entries = client
        .list_objects(&[
            object::Filter::Label(l.parse().unwrap()),
            object::Filter::Type(ty),
        ])
        .unwrap();
    assert_eq!(entries.len(), 1, "{l}");
    client.get_object_info(entries[0].object_id, ty).unwrap()
}

#[tokio::test]
async fn generated_keys_have_the_least_capabilities_and_work() {
    let mock = new_mock();
    let hsm = mock_backend(&mock, Options::default());

    let id = hsm
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let tls = hsm.generate(&label("tls"), KeyKind::P256).await.unwrap();
    let seal = hsm.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    assert_eq!(id.kind, KeyKind::Secp256k1);
    assert!(matches!(id.public_key, Some(PublicKey::Secp256k1(_))));
    assert!(matches!(tls.public_key, Some(PublicKey::P256(_))));
    assert_eq!(seal.public_key, None);

    let info = object_info(&mock, "identity", object::Type::AsymmetricKey);
    assert_eq!(info.capabilities, Capability::SIGN_ECDSA);
    assert_eq!(info.domains, Domain::DOM1);
    assert_eq!(info.algorithm, asymmetric::Algorithm::EcK256.into());
    let info = object_info(&mock, "tls", object::Type::AsymmetricKey);
    assert_eq!(info.capabilities, Capability::SIGN_ECDSA);
    assert_eq!(info.algorithm, asymmetric::Algorithm::EcP256.into());
    let info = object_info(&mock, "seal", object::Type::HmacKey);
    assert_eq!(info.capabilities, Capability::SIGN_HMAC);
    assert_eq!(info.algorithm, hmac::Algorithm::Sha256.into());

    // The public key the backend reports is the device's.
    let raw = raw_client(&mock)
        .get_public_key(object_info(&mock, "identity", object::Type::AsymmetricKey).object_id)
        .unwrap();
    let mut sec1 = vec![4u8];
    sec1.extend_from_slice(raw.as_slice());
    assert_eq!(
        hsm.public_key(&label("identity")).await.unwrap(),
        PublicKey::from_sec1(KeyKind::Secp256k1, &sec1).unwrap()
    );
}

#[tokio::test]
async fn backup_configured_adds_only_exportable_under_wrap() {
    let mock = new_mock();
    let hsm = mock_backend(
        &mock,
        Options {
            domains: vec![2, 5],
            ..with_backup()
        },
    );
    hsm.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    hsm.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    let info = object_info(&mock, "identity", object::Type::AsymmetricKey);
    assert_eq!(
        info.capabilities,
        Capability::SIGN_ECDSA | Capability::EXPORTABLE_UNDER_WRAP
    );
    assert_eq!(info.domains, Domain::DOM2 | Domain::DOM5);
    let info = object_info(&mock, "seal", object::Type::HmacKey);
    assert_eq!(
        info.capabilities,
        Capability::SIGN_HMAC | Capability::EXPORTABLE_UNDER_WRAP
    );
}

#[tokio::test]
async fn existing_unknown_and_wrong_kind_labels() {
    let mock = new_mock();
    let hsm = mock_backend(&mock, Options::default());
    hsm.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    hsm.generate(&label("tls"), KeyKind::P256).await.unwrap();
    hsm.generate(&label("seal"), KeyKind::Seal).await.unwrap();

    for kind in [KeyKind::Secp256k1, KeyKind::P256, KeyKind::Seal] {
        for l in ["identity", "tls", "seal"] {
            let e = hsm.generate(&label(l), kind).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::KeyExists, "{l} {kind}: {e}");
        }
    }
    // A second backend (no cache) sees the label on the device.
    let other = mock_backend(&mock, Options::default());
    let e = other
        .generate(&label("identity"), KeyKind::P256)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyExists, "{e}");

    let missing = label("missing");
    let d = digest("x");
    let blob = hsm.seal(&label("seal"), b"x", b"").await.unwrap();
    let errs = [
        hsm.public_key(&missing).await.unwrap_err(),
        hsm.sign_secp256k1_prehash(&missing, &d).await.unwrap_err(),
        hsm.sign_p256_prehash(&missing, &d).await.unwrap_err(),
        hsm.seal(&missing, b"x", b"").await.unwrap_err(),
        hsm.unseal(&missing, &blob, b"").await.unwrap_err(),
        hsm.destroy(&missing).await.unwrap_err(),
        hsm.backup(&missing).await.unwrap_err(),
    ];
    for e in &errs[..6] {
        assert_eq!(e.kind(), ErrorKind::KeyNotFound, "{e}");
        assert_eq!(e.key_label(), Some("missing"));
        assert!(e.to_string().contains("keys generate"), "{e}");
    }
    // Backup is off in this backend, which it says before looking for the key.
    assert_eq!(errs[6].kind(), ErrorKind::Config);

    let wrong = [
        hsm.sign_secp256k1_prehash(&label("tls"), &d)
            .await
            .unwrap_err(),
        hsm.sign_secp256k1_prehash(&label("seal"), &d)
            .await
            .unwrap_err(),
        hsm.sign_p256_prehash(&label("identity"), &d)
            .await
            .unwrap_err(),
        hsm.sign_p256_prehash(&label("seal"), &d).await.unwrap_err(),
        hsm.seal(&label("identity"), b"x", b"").await.unwrap_err(),
        hsm.unseal(&label("tls"), &blob, b"").await.unwrap_err(),
        hsm.public_key(&label("seal")).await.unwrap_err(),
    ];
    for e in wrong {
        assert_eq!(e.kind(), ErrorKind::WrongKeyKind, "{e}");
    }
}

#[tokio::test]
async fn secp256k1_signatures_are_low_s_and_recover_the_key() {
    let mock = new_mock();
    let hsm = mock_backend(&mock, Options::default());
    let info = hsm
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let Some(PublicKey::Secp256k1(pk)) = info.public_key else {
        panic!("no key")
    };
    let half_order: [u8; 32] = secp256k1::constants::CURVE_ORDER
        .iter()
        .scan(0u16, |carry, b| {
            let v = (*carry << 8) | u16::from(*b);
            *carry = v & 1;
            Some((v >> 1) as u8)
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    // MockHsm, like the device, returns high S about half the time; 32 tries make missing the
    // normalisation path a 1-in-4-billion event.
    for i in 0..32 {
        let d = digest(&format!("message {i}"));
        let sig = hsm
            .sign_secp256k1_prehash(&label("identity"), &d)
            .await
            .unwrap();
        assert!(sig.verify(&d, &pk));
        assert_eq!(sig.recover(&d).unwrap(), pk);
        assert!(sig.compact()[32..] <= half_order[..], "high S at {i}");
    }
}

#[tokio::test]
async fn p256_signatures_verify_with_the_p256_crate() {
    let mock = new_mock();
    let hsm = mock_backend(&mock, Options::default());
    let info = hsm.generate(&label("tls"), KeyKind::P256).await.unwrap();
    let Some(PublicKey::P256(pk)) = info.public_key else {
        panic!("no key")
    };
    let vk = p256::ecdsa::VerifyingKey::from(&pk);
    for i in 0..8 {
        let d = digest(&format!("handshake {i}"));
        let sig = hsm.sign_p256_prehash(&label("tls"), &d).await.unwrap();
        let parsed = p256::ecdsa::Signature::from_der(&sig.to_der()).unwrap();
        vk.verify_prehash(&d, &parsed).unwrap();
        assert!(vk.verify_prehash(&digest("other"), &parsed).is_err());
    }
}

#[tokio::test]
async fn seal_round_trips_and_detects_every_change() {
    let mock = new_mock();
    let hsm = mock_backend(&mock, Options::default());
    let l = label("seal");
    hsm.generate(&l, KeyKind::Seal).await.unwrap();
    hsm.generate(&label("seal-2"), KeyKind::Seal).await.unwrap();
    let share = b"wsts private share bytes".to_vec();

    let blob = hsm.seal(&l, &share, b"dkg round 7").await.unwrap();
    assert_eq!(
        hsm.unseal(&l, &blob, b"dkg round 7")
            .await
            .unwrap()
            .expose(),
        &share[..]
    );
    assert!(!blob.as_bytes().windows(share.len()).any(|w| w == share));

    // Fresh nonce each time.
    let again = hsm.seal(&l, &share, b"dkg round 7").await.unwrap();
    assert_ne!(blob, again);
    assert_ne!(blob.as_bytes()[1..33], again.as_bytes()[1..33]);

    // Wrong AAD, wrong key.
    let e = hsm.unseal(&l, &blob, b"dkg round 8").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered, "{e}");
    let e = hsm
        .unseal(&label("seal-2"), &blob, b"dkg round 7")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered, "{e}");

    // One flipped bit anywhere (format byte, nonce, ciphertext, tag).
    for i in 0..blob.len() {
        for bit in [0x01u8, 0x80] {
            let mut bytes = blob.as_bytes().to_vec();
            bytes[i] ^= bit;
            let e = hsm
                .unseal(&l, &SealedBlob::from_bytes(bytes), b"dkg round 7")
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Tampered, "byte {i} bit {bit:#x}: {e}");
        }
    }
    // Every truncation, and garbage: an error, never a panic.
    for n in 0..blob.len() {
        let e = hsm
            .unseal(
                &l,
                &SealedBlob::from_bytes(blob.as_bytes()[..n].to_vec()),
                b"dkg round 7",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Truncated | ErrorKind::Tampered),
            "len {n}: {e}"
        );
    }
    let e = hsm
        .unseal(&l, &SealedBlob::from_bytes(vec![0xAB; 300]), b"")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered);

    // Empty plaintext is fine too.
    let empty = hsm.seal(&l, b"", b"").await.unwrap();
    assert!(hsm.unseal(&l, &empty, b"").await.unwrap().is_empty());
}

#[tokio::test]
async fn keys_survive_reopening_the_device() {
    let mock = new_mock();
    let first = mock_backend(&mock, Options::default());
    let id = first
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let tls = first.generate(&label("tls"), KeyKind::P256).await.unwrap();
    first.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    let blob = first.seal(&label("seal"), b"secret", b"aad").await.unwrap();
    let listed = first.list().await.unwrap();
    drop(first);

    let second = mock_backend(&mock, Options::default());
    assert_eq!(second.list().await.unwrap(), listed);
    assert_eq!(
        Some(second.public_key(&label("identity")).await.unwrap()),
        id.public_key
    );
    assert_eq!(
        Some(second.public_key(&label("tls")).await.unwrap()),
        tls.public_key
    );
    let d = digest("after reopen");
    let Some(PublicKey::Secp256k1(pk)) = id.public_key else {
        panic!()
    };
    assert!(second
        .sign_secp256k1_prehash(&label("identity"), &d)
        .await
        .unwrap()
        .verify(&d, &pk));
    assert_eq!(
        second
            .unseal(&label("seal"), &blob, b"aad")
            .await
            .unwrap()
            .expose(),
        b"secret"
    );
}

#[tokio::test]
async fn list_shows_exactly_the_signers_keys() {
    let mock = new_mock();
    let hsm = mock_backend(&mock, Options::default());
    assert!(hsm.list().await.unwrap().is_empty());
    let a = hsm
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let b = hsm.generate(&label("tls"), KeyKind::P256).await.unwrap();
    let c = hsm.generate(&label("seal"), KeyKind::Seal).await.unwrap();

    // Objects that are not ours: a wrap key, an Ed25519 key, a key in another domain, an HMAC
    // key of another hash, opaque data.
    let raw = raw_client(&mock);
    plant_wrap_key(&mock);
    raw.generate_asymmetric_key(
        0x0300,
        "ed-key".parse().unwrap(),
        Domain::DOM1,
        Capability::SIGN_EDDSA,
        asymmetric::Algorithm::Ed25519,
    )
    .unwrap();
    raw.generate_asymmetric_key(
        0x0301,
        "other-domain".parse().unwrap(),
        Domain::DOM9,
        Capability::SIGN_ECDSA,
        asymmetric::Algorithm::EcK256,
    )
    .unwrap();
    raw.generate_hmac_key(
        0x0302,
        "sha1-hmac".parse().unwrap(),
        Domain::DOM1,
        Capability::SIGN_HMAC,
        hmac::Algorithm::Sha1,
    )
    .unwrap();
    raw.put_opaque(
        0x0303,
        "cert".parse().unwrap(),
        Domain::DOM1,
        Capability::empty(),
        yubihsm::opaque::Algorithm::Data,
        vec![1, 2, 3],
    )
    .unwrap();

    let mut expected = vec![a, b, c];
    expected.sort_by(|x, y| x.label.cmp(&y.label));
    assert_eq!(hsm.list().await.unwrap(), expected);

    // Using the foreign Ed25519 key by label is a wrong kind; the other-domain key is invisible.
    let e = hsm
        .sign_secp256k1_prehash(&label("ed-key"), &digest("x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongKeyKind, "{e}");
    let e = hsm.public_key(&label("other-domain")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyNotFound, "{e}");
    // And destroy leaves foreign objects alone.
    let e = hsm.destroy(&label("ed-key")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongKeyKind, "{e}");
    assert!(raw
        .get_object_info(0x0300, object::Type::AsymmetricKey)
        .is_ok());
}

#[tokio::test]
async fn destroy_removes_the_key() {
    let mock = new_mock();
    let hsm = mock_backend(&mock, Options::default());
    for (l, kind) in [
        ("identity", KeyKind::Secp256k1),
        ("tls", KeyKind::P256),
        ("seal", KeyKind::Seal),
    ] {
        hsm.generate(&label(l), kind).await.unwrap();
        hsm.destroy(&label(l)).await.unwrap();
        let e = hsm.public_key(&label(l)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyNotFound, "{e}");
        let e = hsm.destroy(&label(l)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyNotFound, "{e}");
        // The label is free again.
        hsm.generate(&label(l), kind).await.unwrap();
    }
    assert_eq!(hsm.list().await.unwrap().len(), 3);
    // Only our keys plus the factory auth key remain on the device.
    assert_eq!(raw_client(&mock).list_objects(&[]).unwrap().len(), 4);
}

#[tokio::test]
async fn a_key_replaced_behind_the_cache_is_found_again() {
    let mock = new_mock();
    let a = mock_backend(&mock, Options::default());
    let b = mock_backend(&mock, Options::default());
    let l = label("identity");
    a.generate(&l, KeyKind::Secp256k1).await.unwrap();
    a.public_key(&l).await.unwrap(); // cached in `a`

    // Another process destroys it: `a` reports KeyNotFound, not a device error.
    b.destroy(&l).await.unwrap();
    let e = a
        .sign_secp256k1_prehash(&l, &digest("x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyNotFound, "{e}");

    // Another process makes a new key under the label (it gets the freed object id):
    // `a` notices the signature is not from its cached key and signs with the new one.
    a.generate(&l, KeyKind::Secp256k1).await.unwrap();
    a.public_key(&l).await.unwrap();
    b.destroy(&l).await.unwrap();
    let fresh = b.generate(&l, KeyKind::Secp256k1).await.unwrap();
    let Some(PublicKey::Secp256k1(pk)) = fresh.public_key else {
        panic!()
    };
    let d = digest("y");
    let sig = a.sign_secp256k1_prehash(&l, &d).await.unwrap();
    assert_eq!(sig.recover(&d).unwrap(), pk);
    assert_eq!(a.public_key(&l).await.unwrap(), PublicKey::Secp256k1(pk));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_signers_all_get_valid_signatures() {
    let mock = new_mock();
    let hsm: Arc<dyn Custody> = Arc::new(mock_backend(&mock, Options::default()));
    let info = hsm
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let tls = hsm.generate(&label("tls"), KeyKind::P256).await.unwrap();
    let Some(PublicKey::Secp256k1(pk)) = info.public_key else {
        panic!()
    };
    let Some(PublicKey::P256(tls_pk)) = tls.public_key else {
        panic!()
    };
    let mut tasks = Vec::new();
    for t in 0..8 {
        let hsm = hsm.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..10 {
                let d = digest(&format!("task {t} msg {i}"));
                let sig = hsm
                    .sign_secp256k1_prehash(&label("identity"), &d)
                    .await
                    .unwrap();
                let p = hsm.sign_p256_prehash(&label("tls"), &d).await.unwrap();
                out.push((d, sig, p));
            }
            out
        }));
    }
    let mut n = 0;
    for task in tasks {
        for (d, sig, p) in task.await.unwrap() {
            assert!(sig.verify(&d, &pk));
            assert!(p.verify(&d, &tls_pk));
            n += 1;
        }
    }
    assert_eq!(n, 80);
}

#[tokio::test]
async fn info_and_health() {
    let mock = new_mock();
    let hsm = mock_backend(&mock, with_backup());
    let info = hsm.info().await.unwrap();
    assert_eq!(info.backend, sbtc_custody::BackendKind::YubiHsm);
    assert_eq!(info.manufacturer, "Yubico");
    assert_eq!(info.model, "YubiHSM 2");
    assert_eq!(info.serial, "0123456789");
    assert_eq!(info.version, "firmware 2.0.0");
    assert!(info.capabilities.secp256k1 && info.capabilities.p256 && info.capabilities.seal);
    assert!(info.capabilities.key_backup);
    assert_eq!(info.capabilities.max_concurrency, 1);
    assert!(info.capabilities.seal_method.contains("HMAC-SHA256"));
    assert!(
        !mock_backend(&mock, Options::default())
            .info()
            .await
            .unwrap()
            .capabilities
            .key_backup
    );

    let h = hsm.health().await.unwrap();
    assert!(h.ok, "{h:?}");
    assert!(h.detail.contains("mockhsm"), "{h:?}");
}

// ---- capability policy: keys planted with the raw client, as an operator's mistake would ----

async fn assert_refused(
    hsm: &sbtc_custody_yubihsm::YubiHsmBackend,
    l: &str,
    kind: KeyKind,
    why: &str,
) {
    let e = match kind {
        KeyKind::Secp256k1 => hsm
            .sign_secp256k1_prehash(&label(l), &digest("x"))
            .await
            .unwrap_err(),
        KeyKind::P256 => hsm
            .sign_p256_prehash(&label(l), &digest("x"))
            .await
            .unwrap_err(),
        KeyKind::Seal => hsm.seal(&label(l), b"x", b"").await.unwrap_err(),
    };
    assert_eq!(e.kind(), ErrorKind::KeyPolicy, "{l}: {e}");
    assert!(e.to_string().contains(why), "{l}: {e}");
    if kind != KeyKind::Seal {
        let e = hsm.public_key(&label(l)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyPolicy, "{l}: {e}");
    }
}

#[tokio::test]
async fn keys_that_could_leave_the_device_or_do_more_are_refused() {
    let mock = new_mock();
    let raw = raw_client(&mock);
    let gen = |id: u16, l: &str, caps: Capability, alg: asymmetric::Algorithm| {
        raw.generate_asymmetric_key(id, l.parse().unwrap(), Domain::DOM1, caps, alg)
            .unwrap();
    };
    gen(
        0x0200,
        "exportable",
        Capability::SIGN_ECDSA | Capability::EXPORTABLE_UNDER_WRAP,
        asymmetric::Algorithm::EcK256,
    );
    gen(
        0x0201,
        "ecdh-too",
        Capability::SIGN_ECDSA | Capability::DERIVE_ECDH,
        asymmetric::Algorithm::EcK256,
    );
    gen(
        0x0202,
        "tls-attest",
        Capability::SIGN_ECDSA | Capability::SIGN_ATTESTATION_CERTIFICATE,
        asymmetric::Algorithm::EcP256,
    );
    gen(
        0x0203,
        "cannot-sign",
        Capability::empty(),
        asymmetric::Algorithm::EcK256,
    );
    raw.generate_hmac_key(
        0x0204,
        "seal-verify".parse().unwrap(),
        Domain::DOM1,
        Capability::SIGN_HMAC | Capability::VERIFY_HMAC,
        hmac::Algorithm::Sha256,
    )
    .unwrap();
    // A key imported in plaintext: a copy may exist anywhere.
    raw.put_asymmetric_key(
        0x0205,
        "imported".parse().unwrap(),
        Domain::DOM1,
        Capability::SIGN_ECDSA,
        asymmetric::Algorithm::EcK256,
        vec![0x11u8; 32],
    )
    .unwrap();

    let hsm = mock_backend(&mock, Options::default());
    assert_refused(&hsm, "exportable", KeyKind::Secp256k1, "backup_wrap_key_id").await;
    assert_refused(&hsm, "ecdh-too", KeyKind::Secp256k1, "DERIVE_ECDH").await;
    assert_refused(
        &hsm,
        "tls-attest",
        KeyKind::P256,
        "SIGN_ATTESTATION_CERTIFICATE",
    )
    .await;
    assert_refused(&hsm, "cannot-sign", KeyKind::Secp256k1, "lacks").await;
    assert_refused(&hsm, "seal-verify", KeyKind::Seal, "VERIFY_HMAC").await;
    assert_refused(
        &hsm,
        "imported",
        KeyKind::Secp256k1,
        "imported in plaintext",
    )
    .await;

    // They still show in `list` (the operator must see them) and can be destroyed.
    assert_eq!(hsm.list().await.unwrap().len(), 6);
    hsm.destroy(&label("exportable")).await.unwrap();
    assert_eq!(hsm.list().await.unwrap().len(), 5);

    // With backup configured, an exportable key is what the operator asked for.
    gen(
        0x0206,
        "exportable-ok",
        Capability::SIGN_ECDSA | Capability::EXPORTABLE_UNDER_WRAP,
        asymmetric::Algorithm::EcK256,
    );
    let backed = mock_backend(&mock, with_backup());
    backed
        .sign_secp256k1_prehash(&label("exportable-ok"), &digest("x"))
        .await
        .unwrap();
    // ...but extra capabilities are still refused.
    assert_refused(&backed, "ecdh-too", KeyKind::Secp256k1, "DERIVE_ECDH").await;
}

#[tokio::test]
async fn two_objects_with_one_label_are_refused() {
    let mock = new_mock();
    let hsm = mock_backend(&mock, Options::default());
    hsm.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    raw_client(&mock)
        .generate_asymmetric_key(
            0x0400,
            "identity".parse().unwrap(),
            Domain::DOM1,
            Capability::SIGN_ECDSA,
            asymmetric::Algorithm::EcK256,
        )
        .unwrap();
    let fresh = mock_backend(&mock, Options::default());
    let e = fresh.public_key(&label("identity")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyPolicy, "{e}");
    assert!(e.to_string().contains("0x0400"), "{e}");
}

// ---- backup and restore under a wrap key ----

#[tokio::test]
async fn backup_destroy_restore_gives_back_the_same_keys() {
    let mock = new_mock();
    plant_wrap_key(&mock);
    let hsm = mock_backend(&mock, with_backup());
    let id = hsm
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let tls = hsm.generate(&label("tls"), KeyKind::P256).await.unwrap();
    hsm.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    let blob = hsm
        .seal(&label("seal"), b"dkg share", b"ctx")
        .await
        .unwrap();

    let mut backups = Vec::new();
    for l in ["identity", "tls", "seal"] {
        let wrapped = hsm.backup(&label(l)).await.unwrap();
        assert!(wrapped.len() > 13 + 16, "{l}");
        backups.push(wrapped);
    }
    // The backup is encrypted: the public key bytes aside, no key material shows.
    for l in ["identity", "tls", "seal"] {
        hsm.destroy(&label(l)).await.unwrap();
    }
    assert!(hsm.list().await.unwrap().is_empty());
    let e = hsm.unseal(&label("seal"), &blob, b"ctx").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyNotFound);

    let mut restored = Vec::new();
    for wrapped in &backups {
        restored.push(hsm.restore(wrapped).await.unwrap());
    }
    assert_eq!(restored[0], id);
    assert_eq!(restored[1], tls);
    assert_eq!(restored[2].label, label("seal"));
    assert_eq!(restored[2].kind, KeyKind::Seal);

    let d = digest("after restore");
    let Some(PublicKey::Secp256k1(pk)) = id.public_key else {
        panic!()
    };
    assert!(hsm
        .sign_secp256k1_prehash(&label("identity"), &d)
        .await
        .unwrap()
        .verify(&d, &pk));
    let Some(PublicKey::P256(tpk)) = tls.public_key else {
        panic!()
    };
    assert!(hsm
        .sign_p256_prehash(&label("tls"), &d)
        .await
        .unwrap()
        .verify(&d, &tpk));
    assert_eq!(
        hsm.unseal(&label("seal"), &blob, b"ctx")
            .await
            .unwrap()
            .expose(),
        b"dkg share"
    );
    // Restored keys are "wrapped generated", which the policy accepts.
    assert_eq!(
        object_info(&mock, "identity", object::Type::AsymmetricKey).origin,
        object::Origin::WrappedGenerated
    );
}

#[tokio::test]
async fn backup_is_refused_without_a_wrap_key_or_an_exportable_key() {
    let mock = new_mock();
    plant_wrap_key(&mock);
    let plain = mock_backend(&mock, Options::default());
    plain
        .generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    let e = plain.backup(&label("identity")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("backup_wrap_key_id"), "{e}");
    let e = plain.restore(&[0u8; 64]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");

    // Turning backup on later does not make old keys exportable.
    let backed = mock_backend(&mock, with_backup());
    let e = backed.backup(&label("identity")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("EXPORTABLE_UNDER_WRAP"), "{e}");

    // Garbage is refused, and the device stays usable.
    let e = backed.restore(&[1, 2, 3]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let e = backed.restore(&[7u8; 80]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered, "{e}");
    backed
        .sign_secp256k1_prehash(&label("identity"), &digest("still works"))
        .await
        .unwrap();
}
