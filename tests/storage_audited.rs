//! Custody through the audit log: each private-key operation is recorded (label, what, why)
//! before it runs, and DKG shares reach the database only as Custody-sealed blobs. Uses a real
//! keystore backend (with a fast KDF), against the in-memory store and a real PostgreSQL database.
#![cfg(feature = "keystore")]

mod storage_support;

use std::sync::Arc;

use sbtc_custody::{Custody, KeyKind, KeyLabel, PublicKey, SecretString};
use sbtc_custody_keystore::{KdfParams, Keystore};
use sbtc_hsm_signer::{
    signing::DkgId,
    storage::{audited::*, *},
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
    ks.generate(&label("seal"), KeyKind::Seal).await.unwrap();
    ks
}

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

const PLAINTEXT_SHARES: &[u8] = b"private DKG shares: must never reach the database in the clear";

async fn every_key_use_is_recorded_first(store: Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let custody = AuditedCustody::new(keystore(&dir).await, store.clone());

    let digest = [7u8; 32];
    let sig = custody
        .sign_secp256k1_prehash(&label("identity"), &digest, "sweep 00ff input 0")
        .await
        .unwrap();
    let PublicKey::Secp256k1(pk) = custody
        .custody()
        .public_key(&label("identity"))
        .await
        .unwrap()
    else {
        panic!("identity is secp256k1")
    };
    assert!(sig.verify(&digest, &pk));

    // DKG shares: sealed by Custody, stored sealed, unsealed through Custody.
    let aad = b"dkg-shares/v1";
    let sealed = custody
        .seal(&label("seal"), PLAINTEXT_SHARES, aad, "dkg round 1")
        .await
        .unwrap();
    let shares = DkgShares {
        aggregate_key: agg(9),
        dkg_id: DkgId(1),
        signer_index: 0,
        sealed_private_shares: sealed,
        public_shares: vec![1; 10],
        signer_set: vec![key(1), key(2)],
        threshold: 2,
        status: DkgSharesStatus::Verified,
        started_at_block_hash: bh(1),
        started_at_block_height: 1,
    };
    store.write_dkg_shares(&shares).await.unwrap();
    let stored = store.get_dkg_shares(&agg(9)).await.unwrap().unwrap();
    let bytes = stored.shares.sealed_private_shares.as_bytes();
    assert!(!bytes
        .windows(PLAINTEXT_SHARES.len())
        .any(|w| w == PLAINTEXT_SHARES));
    let unsealed = custody
        .unseal(
            &label("seal"),
            &stored.shares.sealed_private_shares,
            aad,
            "load dkg shares at start",
        )
        .await
        .unwrap();
    assert_eq!(unsealed.expose(), PLAINTEXT_SHARES);

    let log = store.get_audit_log().await.unwrap();
    let summary: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| {
            (
                e.record.key_label.as_str(),
                e.record.operation.as_str(),
                e.record.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("identity", "sign_secp256k1_prehash", "sweep 00ff input 0"),
            ("seal", "seal", "dkg round 1"),
            ("seal", "unseal", "load dkg shares at start"),
        ]
    );
    assert_eq!(log[0].record.message, digest.to_vec());
    assert!(log.iter().all(|e| !e
        .record
        .message
        .windows(PLAINTEXT_SHARES.len())
        .any(|w| w == PLAINTEXT_SHARES)));
    assert!(store.verify_audit_log().await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_every_key_use_is_recorded_first() {
    every_key_use_is_recorded_first(Arc::new(memory::MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_key_use_is_recorded_first() {
    let Some(db) = TestDb::create("postgres_every_key_use_is_recorded_first").await else {
        return;
    };
    every_key_use_is_recorded_first(Arc::new(db.store().await)).await;
    // The plaintext is nowhere in the table either.
    let row = db
        .client()
        .await
        .query_one(
            "SELECT encrypted_private_shares FROM sbtc_signer.dkg_shares",
            &[],
        )
        .await
        .unwrap();
    let raw: Vec<u8> = row.get(0);
    assert!(!raw
        .windows(PLAINTEXT_SHARES.len())
        .any(|w| w == PLAINTEXT_SHARES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_audit_record_no_signature() {
    let Some(db) = TestDb::create("no_audit_record_no_signature").await else {
        return;
    };
    let store = Arc::new(db.store().await);
    // Make every append fail, the way a full disk or a revoked grant would.
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE sbtc_signer.audit_log ADD CONSTRAINT refuse CHECK (false) NOT VALID",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let custody = AuditedCustody::new(keystore(&dir).await, store.clone());
    let err = custody
        .sign_secp256k1_prehash(&label("identity"), &[1; 32], "should not happen")
        .await
        .unwrap_err();
    assert!(matches!(err, AuditedError::Audit(_)), "{err}");
    assert!(err.to_string().contains("the key was not used"), "{err}");
    assert!(store.get_audit_log().await.unwrap().is_empty());
}
