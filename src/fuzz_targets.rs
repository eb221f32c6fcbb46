//! The bodies of the fuzz targets: what a signer does with bytes that someone else chose. Each
//! function takes arbitrary bytes, must never panic, and returns whether the input was accepted
//! (so the regression test can tell that the seed corpus still reaches past the first check).
//! The afl binaries in `fuzz/` and the corpus regression test (`tests/fuzz_corpus.rs`) both call
//! these functions, so a crash found by the fuzzer is replayed by `cargo test`. Test builds only
//! (`cfg(any(test, feature = "testing"))`); see docs/fuzzing.md.
//!
//! Besides "no panic", the targets check what must hold for every accepted input: a decoded
//! envelope or round message re-encodes to one that decodes to the same value, and a certificate
//! that parses is admitted by a signer set holding its identity and pin and refused by one that
//! does not.

use std::{sync::OnceLock, time::Duration};

use bytes::Bytes;

use crate::{
    coordination::{wire, DkgDecision},
    peer::{
        binding::Binding,
        cert,
        message::{self, Body},
        tls::{peer_server_name, PeerVerifier},
        Member, Metrics, SharedSet, SignerSet,
    },
};

/// The target names, as the corpus directories (`fuzz/corpus/<name>/`) and afl binaries call them.
pub const TARGETS: &[&str] = &[
    "peer_envelope",
    "round_message",
    "cert_binding",
    "peer_certificate",
    "keystore_file",
    "config",
    "stacks_transaction",
];

/// The signer-set size the round decoder is given (bounds every list of signers and keys).
pub const ROUND_SIGNERS: usize = 15;

/// The secret key of the peer whose envelopes [`peer_envelope`] decodes: signed statements in the
/// seed corpus are signed with it, so the fuzzer starts from statements whose signature verifies.
pub const SENDER_SECRET: [u8; 32] = [0x11; 32];

/// The passphrase of the keystore files in the seed corpus.
pub const KEYSTORE_PASSPHRASE: &str = "sbtc fuzz keystore passphrase";

/// [`keystore_file`] skips files whose Argon2id settings exceed these: they are refused or
/// accepted by the same code as cheap ones, and a 4 GiB derivation per input would stall the fuzzer.
const KEYSTORE_MAX_KDF: (u64, u64, u64) = (1024, 2, 4);

/// Runs the target called `name` on `data`; `None` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> Option<bool> {
    Some(match name {
        "peer_envelope" => peer_envelope(data),
        "round_message" => round_message(data),
        "cert_binding" => cert_binding(data),
        "peer_certificate" => peer_certificate(data),
        "keystore_file" => keystore_file(data),
        "config" => config(data),
        "stacks_transaction" => stacks_transaction(data),
        _ => return None,
    })
}

/// The identity key of the peer that sent the envelopes [`peer_envelope`] decodes.
pub fn sender() -> secp256k1::PublicKey {
    static KEY: OnceLock<secp256k1::PublicKey> = OnceLock::new();
    *KEY.get_or_init(|| {
        secp256k1::SecretKey::from_slice(&SENDER_SECRET)
            .expect("a valid secret key")
            .public_key(secp256k1::SECP256K1)
    })
}

/// An envelope as a peer link receives it (`message::decode`: version, tip, round id, statement
/// signature), then what the round transport does with its body: the typed round message is
/// decoded for a signer set of [`ROUND_SIGNERS`], a decision statement's payload as a DKG decision.
pub fn peer_envelope(data: &[u8]) -> bool {
    let sender = sender();
    let Ok(env) = message::decode(Bytes::copy_from_slice(data), &sender) else {
        return false;
    };
    let again = message::decode(message::encode(&env), &sender)
        .expect("an envelope that decoded re-encodes to one that decodes");
    assert_eq!(again, env, "an envelope survives re-encoding unchanged");
    match env.body {
        Some(Body::Round(r)) => {
            let _ = wire::decode_round(r, ROUND_SIGNERS);
        }
        Some(Body::Decision(s)) => {
            let _ = DkgDecision::from_bytes(&s.payload);
        }
        Some(Body::Votes(s)) => {
            let _ = crate::coordination::votes::BlockVotes::from_bytes(&s.payload);
        }
        Some(Body::Proposal(_) | Body::Ack(_) | Body::Deposit(_)) | None => {}
    }
    true
}

/// Protobuf bytes as a round message (`wire::decode_round_bytes`, every field checked), and the
/// same bytes as a DKG decision payload. A decoded message must re-encode and decode to itself.
pub fn round_message(data: &[u8]) -> bool {
    let decision = DkgDecision::from_bytes(data);
    if let Ok(d) = &decision {
        let bytes = d.to_bytes().expect("a decoded decision re-encodes");
        assert_eq!(DkgDecision::from_bytes(&bytes).as_ref(), Ok(d));
    }
    let Ok(msg) = wire::decode_round_bytes(Bytes::copy_from_slice(data), ROUND_SIGNERS) else {
        return decision.is_ok();
    };
    let bytes = wire::encode_round_bytes(&msg).expect("a decoded round message re-encodes");
    let again =
        wire::decode_round_bytes(bytes, ROUND_SIGNERS).expect("a re-encoded round message decodes");
    assert_eq!(again, msg, "a round message survives re-encoding unchanged");
    true
}

/// A certificate's binding extension value (`Binding::decode`). Input longer than the extension
/// (101 bytes) is read as extension || SPKI DER || not_before || not_after (8 bytes each,
/// big-endian), and the binding is verified against that SPKI and validity. True if it verifies.
pub fn cert_binding(data: &[u8]) -> bool {
    const EXT: usize = 101;
    let whole = Binding::decode(data);
    if let Ok(b) = &whole {
        assert_eq!(b.encode(), data, "a decoded binding encodes to its input");
    }
    if data.len() < EXT + 16 {
        return false;
    }
    let (ext, rest) = data.split_at(EXT);
    let (spki, times) = rest.split_at(rest.len() - 16);
    let Ok(binding) = Binding::decode(ext) else {
        return false;
    };
    let not_before = i64::from_be_bytes(times[..8].try_into().expect("8 bytes"));
    let not_after = i64::from_be_bytes(times[8..].try_into().expect("8 bytes"));
    binding.verifies(spki, not_before, not_after)
}

/// A peer's DER certificate as the TLS handshake hands it to [`PeerVerifier`]: parsed, binding
/// verified, then admitted by the signer set. Checked at the start of its own validity, the
/// certificate must be admitted (inbound and outbound) by a set holding its identity key with its
/// SPKI pinned, and refused by a set that pins another SPKI or lacks the identity.
pub fn peer_certificate(data: &[u8]) -> bool {
    let _ = cert::PeerCertificate::from_der_unverified(data.to_vec());
    let Ok(info) = cert::parse(data) else {
        return false;
    };
    let der = rustls::pki_types::CertificateDer::from(data);
    let Ok(at) = u64::try_from(info.not_before) else {
        return true;
    };
    let now = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(at));
    let admits = |pin: [u8; 32], identity: secp256k1::PublicKey| {
        let member = Member {
            endpoint: None,
            spki_pin: Some(pin),
        };
        let set = SignerSet::new([(identity, member)], 1).expect("a one-member set");
        let verifier =
            PeerVerifier::new(SharedSet::new(set), std::sync::Arc::new(Metrics::default()));
        let inbound = rustls::server::danger::ClientCertVerifier::verify_client_cert(
            &*verifier,
            &der,
            &[],
            now,
        )
        .is_ok();
        let outbound = rustls::client::danger::ServerCertVerifier::verify_server_cert(
            &*verifier,
            &der,
            &[],
            &peer_server_name().expect("the peer name is a DNS name"),
            &[],
            now,
        )
        .is_ok();
        assert_eq!(inbound, outbound, "both sides decide alike");
        inbound
    };
    // Validity is [not_before, not_after), and no longer than the default maximum lifetime.
    let max_lifetime = i64::try_from(crate::peer::DEFAULT_MAX_CERT_LIFETIME.as_secs())
        .expect("30 days fit in i64");
    let valid = info.not_before < info.not_after && info.lifetime() <= max_lifetime;
    assert_eq!(admits(info.spki_sha256(), info.identity), valid);
    let mut other_pin = info.spki_sha256();
    other_pin[0] ^= 1;
    assert!(!admits(other_pin, info.identity), "a wrong pin is refused");
    let stranger = secp256k1::SecretKey::from_slice(&[0x22; 32])
        .expect("a valid secret key")
        .public_key(secp256k1::SECP256K1);
    if stranger != info.identity {
        assert!(
            !admits(info.spki_sha256(), stranger),
            "an identity outside the set is refused"
        );
    }
    true
}

/// A keystore file opened with [`KEYSTORE_PASSPHRASE`] through the public API (permission check,
/// bounded read, parse, Argon2id, passphrase check, MAC, every entry), then each key listed and
/// used once. Files asking for more Argon2id work than the test settings are skipped. The
/// keystore catches panics in its blocking calls and reports them as internal errors, so an
/// internal error is treated as a crash here. True if the file opened.
#[cfg(feature = "keystore")]
pub fn keystore_file(data: &[u8]) -> bool {
    use sbtc_custody::{Custody, ErrorKind, KeyKind, SecretString};

    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let kdf = &v["kdf"];
        let over = |field: &str, max: u64| kdf[field].as_u64().is_some_and(|n| n > max);
        let (memory, iterations, lanes) = KEYSTORE_MAX_KDF;
        if over("memory_kib", memory)
            || over("iterations", iterations)
            || over("parallelism", lanes)
        {
            return false;
        }
    }
    // One file per call: the regression tests run targets on several threads at once.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sbtc-fuzz-keystore-{}", std::process::id()));
    let path = dir.join(format!("keystore-{call}.json"));
    let write = || -> std::io::Result<()> {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(data)
    };
    write().expect("the fuzz keystore file can be written");
    let passphrase = SecretString::new(KEYSTORE_PASSPHRASE.to_owned());
    let opened = runtime().block_on(async {
        // The seeds use the fast test KDF, which opens only when asked for.
        let options = sbtc_custody_keystore::OpenOptions::insecure_test();
        let ks =
            match sbtc_custody_keystore::Keystore::open_with_options(&path, &passphrase, &options)
                .await
            {
                Ok(ks) => ks,
                Err(e) => {
                    assert_ne!(e.kind(), ErrorKind::Internal, "open failed internally: {e}");
                    return false;
                }
            };
        let keys = ks.list().await.expect("an opened keystore lists its keys");
        for key in keys {
            let used = match key.kind {
                KeyKind::Secp256k1 => ks
                    .sign_secp256k1_prehash(&key.label, &[7; 32])
                    .await
                    .map(drop),
                KeyKind::P256 => ks.sign_p256_prehash(&key.label, &[7; 32]).await.map(drop),
                KeyKind::Seal => ks.seal(&key.label, b"fuzz", b"aad").await.map(drop),
            };
            used.expect("every key of an opened keystore can be used");
        }
        true
    });
    // The keystore leaves its lock and rollback-mark files beside it.
    for extra in ["", ".lock", ".state"] {
        let mut p = path.clone().into_os_string();
        p.push(extra);
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir(&dir);
    opened
}

/// Without the keystore backend there is no keystore file to parse.
#[cfg(not(feature = "keystore"))]
pub fn keystore_file(_data: &[u8]) -> bool {
    false
}

#[cfg(feature = "keystore")]
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A TOML config (`Config::parse`), then every check the signer makes of it without a device,
/// a file or the network: key labels, the keystore passphrase source and KDF settings, the peer
/// endpoint, limits, certificate validity and bootstrap set, and the storage url when the
/// password does not come from a file.
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(config) = crate::config::Config::parse(text) else {
        return false;
    };
    for role in [
        sbtc_custody::Role::Identity,
        sbtc_custody::Role::Tls,
        sbtc_custody::Role::Seal,
    ] {
        let _ = config.keys.label(role);
    }
    #[cfg(feature = "keystore")]
    if let Some(ks) = config.custody.as_ref().and_then(|c| c.keystore.as_ref()) {
        let _ = ks.passphrase_source();
        let _ = ks.kdf_params();
    }
    if let Some(peer) = &config.peer {
        let _ = peer.endpoint();
        let _ = peer.limits();
        let _ = peer.validity();
        let _ = peer.bootstrap_set();
    }
    if let Some(storage) = &config.storage {
        if storage.password_file.is_none() {
            let _ = storage.target();
        }
    }
    true
}

/// A Stacks transaction as the devnet's Stacks node reads a submitted one and a signer reads a
/// proposal: decoding never panics; an accepted one re-encodes to exactly its bytes (so its txid
/// is the txid of what was received); the origin check and the reading of a signers' call never
/// panic either.
pub fn stacks_transaction(data: &[u8]) -> bool {
    use crate::chain::stacks::{contracts::SignerCall, transaction::StacksTransaction};
    let Ok(tx) = StacksTransaction::deserialize(data) else {
        return false;
    };
    assert_eq!(
        tx.serialize(),
        data,
        "a decoded transaction re-encodes differently"
    );
    let _ = tx.verify_origin();
    if let Some(call) = tx.contract_call() {
        let _ = SignerCall::from_contract_call(call);
    }
    true
}
