//! One conformance suite for every custody backend.
//!
//! Each check takes a [`Fixture`]: something that can open the same backend store more than once
//! (to prove keys survive a reopen). Labels are unique per check, so checks may share a store.
//! `tests/conformance.rs` instantiates every check for SoftHSM2 (or a vendor module through
//! `PKCS11_MODULE`), the YubiHSM2 MockHsm and the keystore file.

use std::{future::Future, pin::Pin, sync::Arc};

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sbtc_custody::{Custody, ErrorKind, KeyKind, KeyLabel, PublicKey};
use secp256k1::{ecdsa, Message, SECP256K1};
use sha2::{Digest, Sha256};

pub type OpenFuture = Pin<Box<dyn Future<Output = Arc<dyn Custody>> + Send>>;

/// Opens the backend under test; every call opens the same store anew.
pub struct Fixture {
    open: Box<dyn Fn() -> OpenFuture + Send + Sync>,
    /// Keeps temp dirs, tokens or mock devices alive for the fixture's lifetime.
    _keep: Box<dyn std::any::Any + Send + Sync>,
    /// Prepended to every key label: lets runs share a vendor token without colliding.
    label_prefix: String,
}

impl Fixture {
    pub fn new<F, Fut>(open: F, keep: impl std::any::Any + Send + Sync) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Arc<dyn Custody>> + Send + 'static,
    {
        Fixture {
            open: Box::new(move || Box::pin(open())),
            _keep: Box::new(keep),
            label_prefix: String::new(),
        }
    }

    /// Prefixes every key label the checks create (at most 20 characters).
    pub fn with_label_prefix(mut self, prefix: &str) -> Self {
        assert!(prefix.len() <= 20, "label prefix too long");
        self.label_prefix = prefix.to_owned();
        self
    }

    fn label(&self, stem: &str) -> KeyLabel {
        KeyLabel::new(&format!("{}{stem}", self.label_prefix)).expect("test labels are valid")
    }

    pub async fn open(&self) -> Arc<dyn Custody> {
        (self.open)().await
    }
}

fn digest(i: u32) -> [u8; 32] {
    Sha256::digest(format!("conformance message {i}")).into()
}

fn secp(pk: PublicKey) -> secp256k1::PublicKey {
    match pk {
        PublicKey::Secp256k1(k) => k,
        other => panic!("expected a secp256k1 key, got {other:?}"),
    }
}

fn p256_key(pk: PublicKey) -> p256::PublicKey {
    match pk {
        PublicKey::P256(k) => k,
        other => panic!("expected a P-256 key, got {other:?}"),
    }
}

/// Checks a recoverable signature with the secp256k1 crate alone, not with our helpers.
fn assert_secp_valid(
    sig: &sbtc_custody::RecoverableSignature,
    d: &[u8; 32],
    pk: &secp256k1::PublicKey,
) {
    let rsv = sig.to_rsv();
    let plain = ecdsa::Signature::from_compact(&rsv[..64]).expect("64-byte compact signature");
    let msg = Message::from_digest(*d);
    SECP256K1
        .verify_ecdsa(&msg, &plain, pk)
        .expect("signature verifies with the secp256k1 crate");
    let mut normalized = plain;
    normalized.normalize_s();
    assert_eq!(normalized, plain, "signature is low-S");
    let id = ecdsa::RecoveryId::from_i32(i32::from(rsv[64])).expect("recovery id 0..=3");
    let rec = ecdsa::RecoverableSignature::from_compact(&rsv[..64], id).expect("recoverable");
    assert_eq!(
        SECP256K1.recover_ecdsa(&msg, &rec).expect("recovers"),
        *pk,
        "the recovery id recovers the signer's public key"
    );
}

fn assert_p256_valid(sig: &sbtc_custody::P256Signature, d: &[u8; 32], pk: &p256::PublicKey) {
    let vk = p256::ecdsa::VerifyingKey::from(pk);
    let raw = p256::ecdsa::Signature::from_slice(&sig.to_bytes()).expect("r || s");
    vk.verify_prehash(d, &raw)
        .expect("P-256 signature verifies with the p256 crate");
    let der = p256::ecdsa::Signature::from_der(&sig.to_der()).expect("DER parses");
    assert_eq!(der, raw, "DER form carries the same signature");
}

pub async fn secp256k1_signatures_verify_and_recover(fx: &Fixture) {
    let c = fx.open().await;
    let l = fx.label("conf-secp");
    let info = c
        .generate(&l, KeyKind::Secp256k1)
        .await
        .expect("generate secp256k1");
    assert_eq!(info.kind, KeyKind::Secp256k1);
    let pk = secp(info.public_key.expect("secp256k1 key has a public key"));
    assert_eq!(secp(c.public_key(&l).await.expect("public_key")), pk);
    for i in 0..16 {
        let d = digest(i);
        let sig = c.sign_secp256k1_prehash(&l, &d).await.expect("sign");
        assert_secp_valid(&sig, &d, &pk);
    }
}

pub async fn p256_signatures_verify(fx: &Fixture) {
    let c = fx.open().await;
    let l = fx.label("conf-p256");
    let info = c.generate(&l, KeyKind::P256).await.expect("generate p256");
    let pk = p256_key(info.public_key.expect("p256 key has a public key"));
    for i in 0..8 {
        let d = digest(i);
        let sig = c.sign_p256_prehash(&l, &d).await.expect("sign p256");
        assert_p256_valid(&sig, &d, &pk);
    }
}

pub async fn keys_survive_reopen(fx: &Fixture) {
    let (id, tls, seal) = (
        fx.label("conf-reopen-id"),
        fx.label("conf-reopen-tls"),
        fx.label("conf-reopen-seal"),
    );
    let (pk_id, pk_tls, blob) = {
        let c = fx.open().await;
        let a = c
            .generate(&id, KeyKind::Secp256k1)
            .await
            .expect("generate id");
        let b = c.generate(&tls, KeyKind::P256).await.expect("generate tls");
        c.generate(&seal, KeyKind::Seal)
            .await
            .expect("generate seal");
        let blob = c.seal(&seal, b"share bytes", b"aad").await.expect("seal");
        (a.public_key.unwrap(), b.public_key.unwrap(), blob)
    };
    let c = fx.open().await;
    assert_eq!(c.public_key(&id).await.expect("id after reopen"), pk_id);
    assert_eq!(c.public_key(&tls).await.expect("tls after reopen"), pk_tls);
    let d = digest(99);
    let sig = c
        .sign_secp256k1_prehash(&id, &d)
        .await
        .expect("sign after reopen");
    assert_secp_valid(&sig, &d, &secp(pk_id));
    let sig = c
        .sign_p256_prehash(&tls, &d)
        .await
        .expect("sign p256 after reopen");
    assert_p256_valid(&sig, &d, &p256_key(pk_tls));
    let plain = c
        .unseal(&seal, &blob, b"aad")
        .await
        .expect("unseal after reopen");
    assert_eq!(plain.expose(), b"share bytes");
}

pub async fn seal_refuses_wrong_aad_and_changed_bytes(fx: &Fixture) {
    let c = fx.open().await;
    let l = fx.label("conf-seal");
    let info = c.generate(&l, KeyKind::Seal).await.expect("generate seal");
    assert_eq!(info.public_key, None, "a sealing key has no public key");
    let plain = b"wsts private share: 32 bytes....";
    let blob = c.seal(&l, plain, b"dkg round 7").await.expect("seal");
    assert!(
        !blob.as_bytes().windows(plain.len()).any(|w| w == plain),
        "ciphertext hides the plaintext"
    );
    let again = c.seal(&l, plain, b"dkg round 7").await.expect("seal again");
    assert_ne!(blob, again, "a fresh IV every time");
    assert_eq!(
        c.unseal(&l, &blob, b"dkg round 7")
            .await
            .expect("unseal")
            .expose(),
        plain
    );

    let err = c
        .unseal(&l, &blob, b"dkg round 8")
        .await
        .expect_err("wrong AAD");
    assert_eq!(err.kind(), ErrorKind::Tampered, "{err}");
    for i in 0..blob.len() {
        let mut bytes = blob.as_bytes().to_vec();
        bytes[i] ^= 0x01;
        let err = c
            .unseal(
                &l,
                &sbtc_custody::SealedBlob::from_bytes(bytes),
                b"dkg round 7",
            )
            .await
            .expect_err("flipped bit");
        assert!(
            matches!(err.kind(), ErrorKind::Tampered | ErrorKind::Corrupt),
            "bit flip at byte {i}: {err}"
        );
    }
    for cut in [0, 1, blob.len() / 2, blob.len() - 1] {
        let bytes = blob.as_bytes()[..cut].to_vec();
        let err = c
            .unseal(
                &l,
                &sbtc_custody::SealedBlob::from_bytes(bytes),
                b"dkg round 7",
            )
            .await
            .expect_err("truncated blob");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Tampered | ErrorKind::Corrupt | ErrorKind::Truncated
            ),
            "cut at {cut}: {err}"
        );
    }
    // Sealed data is bound to its key: another sealing key cannot open it.
    let other = fx.label("conf-seal-other");
    c.generate(&other, KeyKind::Seal)
        .await
        .expect("second seal key");
    let err = c
        .unseal(&other, &blob, b"dkg round 7")
        .await
        .expect_err("other key");
    assert_eq!(err.kind(), ErrorKind::Tampered, "{err}");
    // Empty and large plaintexts.
    for size in [0usize, 65_536] {
        let data = vec![0xA5u8; size];
        let b = c.seal(&l, &data, b"").await.expect("seal sized");
        assert_eq!(
            c.unseal(&l, &b, b"").await.expect("unseal sized").expose(),
            &data[..]
        );
    }
}

pub async fn unknown_label_is_key_not_found(fx: &Fixture) {
    let c = fx.open().await;
    let l = fx.label("conf-no-such-key");
    let d = digest(1);
    let errors = [
        c.public_key(&l).await.map(|_| ()).expect_err("public_key"),
        c.sign_secp256k1_prehash(&l, &d)
            .await
            .map(|_| ())
            .expect_err("sign"),
        c.sign_p256_prehash(&l, &d)
            .await
            .map(|_| ())
            .expect_err("sign p256"),
        c.seal(&l, b"x", b"").await.map(|_| ()).expect_err("seal"),
        c.destroy(&l).await.expect_err("destroy"),
    ];
    for err in errors {
        assert_eq!(err.kind(), ErrorKind::KeyNotFound, "{err}");
        assert_eq!(err.key_label(), Some(l.as_str()), "{err}");
        assert!(err.to_string().contains(l.as_str()), "{err}");
    }
}

pub async fn wrong_key_kind_is_refused(fx: &Fixture) {
    let c = fx.open().await;
    let (k1, p2, s) = (
        fx.label("conf-kind-k1"),
        fx.label("conf-kind-p256"),
        fx.label("conf-kind-seal"),
    );
    c.generate(&k1, KeyKind::Secp256k1).await.expect("k1");
    c.generate(&p2, KeyKind::P256).await.expect("p256");
    c.generate(&s, KeyKind::Seal).await.expect("seal");
    let d = digest(2);
    let errors = [
        c.sign_secp256k1_prehash(&p2, &d)
            .await
            .map(|_| ())
            .expect_err("k1 sign with p256 key"),
        c.sign_secp256k1_prehash(&s, &d)
            .await
            .map(|_| ())
            .expect_err("k1 sign with seal key"),
        c.sign_p256_prehash(&k1, &d)
            .await
            .map(|_| ())
            .expect_err("p256 sign with k1 key"),
        c.seal(&k1, b"x", b"")
            .await
            .map(|_| ())
            .expect_err("seal with k1 key"),
        c.public_key(&s)
            .await
            .map(|_| ())
            .expect_err("public key of seal key"),
    ];
    for err in errors {
        assert_eq!(err.kind(), ErrorKind::WrongKeyKind, "{err}");
    }
}

pub async fn duplicate_label_is_refused(fx: &Fixture) {
    let c = fx.open().await;
    let l = fx.label("conf-dup");
    let first = c.generate(&l, KeyKind::Secp256k1).await.expect("first");
    let err = c
        .generate(&l, KeyKind::P256)
        .await
        .expect_err("second with same label");
    assert_eq!(err.kind(), ErrorKind::KeyExists, "{err}");
    assert_eq!(
        c.public_key(&l).await.expect("still there"),
        first.public_key.unwrap()
    );
}

pub async fn eight_concurrent_signers(fx: &Fixture) {
    let c = fx.open().await;
    let l = fx.label("conf-concurrent");
    let pk = secp(
        c.generate(&l, KeyKind::Secp256k1)
            .await
            .expect("generate")
            .public_key
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let c = c.clone();
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..8u32 {
                let d = digest(t * 100 + i);
                out.push((d, c.sign_secp256k1_prehash(&l, &d).await));
            }
            out
        }));
    }
    let mut n = 0;
    for t in tasks {
        for (d, sig) in t.await.expect("task") {
            assert_secp_valid(&sig.expect("concurrent signature"), &d, &pk);
            n += 1;
        }
    }
    assert_eq!(n, 64);
}

pub async fn list_and_destroy(fx: &Fixture) {
    let c = fx.open().await;
    let (a, b, s) = (
        fx.label("conf-list-a"),
        fx.label("conf-list-b"),
        fx.label("conf-list-s"),
    );
    let ia = c.generate(&a, KeyKind::Secp256k1).await.expect("a");
    let ib = c.generate(&b, KeyKind::P256).await.expect("b");
    c.generate(&s, KeyKind::Seal).await.expect("s");
    let listed = c.list().await.expect("list");
    for (l, kind, pk) in [
        (&a, KeyKind::Secp256k1, ia.public_key),
        (&b, KeyKind::P256, ib.public_key),
        (&s, KeyKind::Seal, None),
    ] {
        let found: Vec<_> = listed.iter().filter(|k| &k.label == l).collect();
        assert_eq!(found.len(), 1, "{l} listed once in {listed:?}");
        assert_eq!(found[0].kind, kind);
        assert_eq!(found[0].public_key, pk);
    }
    c.destroy(&a).await.expect("destroy");
    let err = c.public_key(&a).await.expect_err("destroyed key");
    assert_eq!(err.kind(), ErrorKind::KeyNotFound, "{err}");
    let err = c
        .sign_secp256k1_prehash(&a, &digest(3))
        .await
        .expect_err("sign destroyed");
    assert_eq!(err.kind(), ErrorKind::KeyNotFound, "{err}");
    assert!(!c.list().await.expect("list").iter().any(|k| k.label == a));
    // Destroyed for good: a reopen does not bring it back, the others stay.
    let c = fx.open().await;
    let listed = c.list().await.expect("list after reopen");
    assert!(!listed.iter().any(|k| k.label == a));
    assert!(listed.iter().any(|k| k.label == b));
}

pub async fn info_and_health(fx: &Fixture) {
    let c = fx.open().await;
    let info = c.info().await.expect("info");
    assert_eq!(info.backend, c.backend());
    assert!(
        info.capabilities.secp256k1 && info.capabilities.p256 && info.capabilities.seal,
        "{info:?}"
    );
    assert!(
        !info.model.is_empty() && !info.serial.is_empty(),
        "{info:?}"
    );
    let h = c.health().await.expect("health");
    assert!(h.ok, "{h:?}");
}

/// Instantiates every check as a `#[tokio::test]` for one backend. `$fixture` is an async
/// expression evaluating to a fresh [`Fixture`].
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:expr) => {
        $crate::conformance_suite!(@each $fixture;
            secp256k1_signatures_verify_and_recover, p256_signatures_verify, keys_survive_reopen,
            seal_refuses_wrong_aad_and_changed_bytes, unknown_label_is_key_not_found,
            wrong_key_kind_is_refused, duplicate_label_is_refused, eight_concurrent_signers,
            list_and_destroy, info_and_health);
    };
    (@each $fixture:expr; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let fx = $fixture.await;
                $crate::conformance::$check(&fx).await;
            }
        )*
    };
}
