//! Audited custody: every private-key operation leaves one audit entry (key, operation, what,
//! why, outcome) before its result is released; the chain head is signed with the identity key;
//! a rewritten and recomputed log is caught by the head signatures. A real keystore backend
//! (fast KDF), against the in-memory store and a real PostgreSQL database.
#![cfg(feature = "keystore")]

mod storage_support;

use std::sync::Arc;

use async_trait::async_trait;
use sbtc_custody::{Custody, ErrorKind, KeyKind, KeyLabel, PublicKey, SecretString};
use sbtc_custody_keystore::{KdfParams, Keystore};
use sbtc_hsm_signer::{
    keys::{
        audit::{self, AuditEntry, AuditRecord, HEAD_OPERATION},
        with_reason, AuditSink, AuditedCustody,
    },
    storage::{audit_sink::StorageAuditSink, memory::MemoryStore, Storage},
};
use storage_support::*;

async fn keystore(dir: &tempfile::TempDir) -> Arc<dyn Custody> {
    let ks = Keystore::create_with_passphrase(
        dir.path().join("keystore"),
        &SecretString::new("correct horse battery staple".into()),
        KdfParams::insecure_for_tests(),
    )
    .await
    .unwrap();
    let ks: Arc<dyn Custody> = Arc::new(ks);
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .unwrap();
    ks.generate(&label("tls"), KeyKind::P256).await.unwrap();
    ks.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    ks
}

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

const PLAINTEXT: &[u8] = b"private DKG shares: must never reach the audit log in the clear";

async fn every_key_use_leaves_one_entry(store: Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let raw = keystore(&dir).await;
    let custody = AuditedCustody::new(raw.clone(), Arc::new(StorageAuditSink(store.clone())));

    let digest = [7u8; 32];
    let sig = with_reason(
        "round 00ff: sign",
        custody.sign_secp256k1_prehash(&label("identity"), &digest),
    )
    .await
    .unwrap();
    let PublicKey::Secp256k1(identity) = raw.public_key(&label("identity")).await.unwrap() else {
        panic!("identity is secp256k1")
    };
    assert!(sig.verify(&digest, &identity));
    with_reason(
        "tls handshake",
        custody.sign_p256_prehash(&label("tls"), &[8u8; 32]),
    )
    .await
    .unwrap();
    let sealed = with_reason(
        "dkg 1: seal",
        custody.seal(&label("seal"), PLAINTEXT, b"aad"),
    )
    .await
    .unwrap();
    let plain = with_reason(
        "round 00ff: unseal",
        custody.unseal(&label("seal"), &sealed, b"aad"),
    )
    .await
    .unwrap();
    assert_eq!(plain.expose(), PLAINTEXT);
    // A failing operation is recorded too, with its outcome.
    let err = custody
        .sign_secp256k1_prehash(&label("missing"), &digest)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyNotFound);
    // Operations that use no private key leave no entry.
    custody.public_key(&label("identity")).await.unwrap();
    custody.list().await.unwrap();

    custody
        .sign_head(&label("identity"), "end of round 00ff")
        .await
        .unwrap();

    let log = store.get_audit_log().await.unwrap();
    let summary: Vec<(&str, &str, &str, &str)> = log
        .iter()
        .map(|e| {
            (
                e.record.key_label.as_str(),
                e.record.operation.as_str(),
                e.record.reason.as_str(),
                e.record.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "identity",
                "sign_secp256k1_prehash",
                "round 00ff: sign",
                "ok"
            ),
            ("tls", "sign_p256_prehash", "tls handshake", "ok"),
            ("seal", "seal", "dkg 1: seal", "ok"),
            ("seal", "unseal", "round 00ff: unseal", "ok"),
            (
                "missing",
                "sign_secp256k1_prehash",
                "unattributed",
                "error: key not found"
            ),
            ("identity", HEAD_OPERATION, "end of round 00ff", "ok"),
        ]
    );
    assert_eq!(log[0].record.message, digest.to_vec());
    assert!(log.iter().all(|e| !e
        .record
        .message
        .windows(PLAINTEXT.len())
        .any(|w| w == PLAINTEXT)));
    // The counters saw exactly what the log holds.
    let counts = custody.counts();
    let total: u64 = counts.values().sum();
    assert_eq!(total, log.len() as u64, "{counts:?}");
    assert_eq!(counts["sign_secp256k1_prehash"], 2);
    assert_eq!(counts[HEAD_OPERATION], 1);

    assert!(store.verify_audit_log().await.unwrap().is_intact());
    let heads = audit::verify_heads(&log, Some(&identity));
    assert_eq!(heads.problem, None);
    assert_eq!((heads.signed_heads, heads.last_signed_seq), (1, 5));
    assert_eq!(heads.signer, Some(identity));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_every_key_use_leaves_one_entry() {
    every_key_use_leaves_one_entry(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_key_use_leaves_one_entry() {
    let Some(db) = TestDb::create("postgres_every_key_use_leaves_one_entry").await else {
        return;
    };
    every_key_use_leaves_one_entry(Arc::new(db.store().await)).await;
}

/// A log that refuses every append, the way a full disk or a revoked grant would.
struct Refusing;

#[async_trait]
impl AuditSink for Refusing {
    async fn append(&self, _: &AuditRecord) -> Result<AuditEntry, String> {
        Err("disk full".into())
    }
    async fn head(&self) -> Result<Option<(u64, [u8; 32])>, String> {
        Err("disk full".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_audit_record_no_result() {
    let dir = tempfile::tempdir().unwrap();
    let custody = AuditedCustody::new(keystore(&dir).await, Arc::new(Refusing));
    let err = custody
        .sign_secp256k1_prehash(&label("identity"), &[1; 32])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuditUnavailable, "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    let err = custody
        .unseal(
            &label("seal"),
            &sbtc_custody::SealedBlob::from_bytes(vec![0; 64]),
            b"",
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuditUnavailable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_append_failure_withholds_the_signature() {
    let Some(db) = TestDb::create("postgres_append_failure_withholds_the_signature").await else {
        return;
    };
    let store: Arc<dyn Storage> = Arc::new(db.store().await);
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE sbtc_signer.audit_log ADD CONSTRAINT refuse CHECK (false) NOT VALID",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let custody = AuditedCustody::new(
        keystore(&dir).await,
        Arc::new(StorageAuditSink(store.clone())),
    );
    let err = custody
        .sign_secp256k1_prehash(&label("identity"), &[1; 32])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuditUnavailable, "{err}");
    assert!(store.get_audit_log().await.unwrap().is_empty());
}
