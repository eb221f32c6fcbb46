//! `peer card` on the real binary: a keystore signer and a SoftHSM2 signer.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

mod child_softhsm;

struct Signer {
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Signer {
    fn ok(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sbtc-hsm-signer"));
        cmd.arg("--config").arg(&self.config).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run sbtc-hsm-signer");
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn secret(&self, name: &str, value: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("state").join("peer-cert.der")
    }
}

fn peer_section(dir: &Path) -> String {
    format!(
        "[peer]\nlisten = \"127.0.0.1:4122\"\npublic_endpoint = \"signer-1.example.org:4122\"\ncert_path = \"{}\"\n",
        dir.join("state").join("peer-cert.der").display()
    )
}

fn keystore_signer() -> Signer {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signer.toml");
    let s = Signer {
        config: config.clone(),
        dir,
        env: vec![("SBTC_LOG".into(), "warn".into())],
    };
    let pass = s.secret("passphrase", "correct horse battery staple");
    std::fs::write(
        &config,
        format!(
            "[custody]\nbackend = \"keystore\"\n[custody.keystore]\npath = \"{}\"\npassphrase_file = \"{}\"\n\
             [custody.keystore.kdf]\nmemory_kib = 256\niterations = 1\nparallelism = 1\ninsecure_test_kdf = true\n{}",
            s.dir.path().join("keystore").display(),
            pass.display(),
            peer_section(s.dir.path())
        ),
    )
    .unwrap();
    s.ok(&["keys", "init"]);
    s
}

fn softhsm_signer() -> Signer {
    let dir = tempfile::tempdir().unwrap();
    let conf = child_softhsm::init_token(dir.path(), "peer-card");
    let config = dir.path().join("signer.toml");
    let s = Signer {
        config: config.clone(),
        dir,
        env: vec![
            ("SOFTHSM2_CONF".into(), conf.display().to_string()),
            ("SBTC_LOG".into(), "warn".into()),
        ],
    };
    let pin = s.secret("pin", child_softhsm::USER_PIN);
    std::fs::write(
        &config,
        format!(
            "[custody]\nbackend = \"pkcs11\"\n[custody.pkcs11]\nmodule = \"{}\"\ntoken_label = \"peer-card\"\npin_file = \"{}\"\n{}",
            child_softhsm::MODULE,
            pin.display(),
            peer_section(s.dir.path())
        ),
    )
    .unwrap();
    s
}

fn card(s: &Signer) -> serde_json::Value {
    serde_json::from_str(&s.ok(&["peer", "card", "--json"])).unwrap()
}

fn check_card(s: &Signer) {
    s.ok(&["keys", "generate", "--role", "identity"]);
    s.ok(&["keys", "generate", "--role", "tls"]);
    let first = card(s);
    assert_eq!(first["new_certificate"], true, "{first:#}");
    assert_eq!(first["endpoint"], "signer-1.example.org:4122");
    // The identity on the card is the backend's identity key.
    let listed: serde_json::Value =
        serde_json::from_str(&s.ok(&["keys", "list", "--json"])).unwrap();
    let identity = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "identity")
        .unwrap()["public_key"]
        .clone();
    assert_eq!(first["identity"], identity, "{first:#} {listed:#}");
    assert_eq!(first["cert_sha256"].as_str().unwrap().len(), 64);

    // The certificate is kept: the same fingerprint on the next run.
    let again = card(s);
    assert_eq!(again["new_certificate"], false);
    assert_eq!(again["cert_sha256"], first["cert_sha256"]);
    assert_eq!(again["spki_sha256"], first["spki_sha256"]);

    // The kept certificate verifies and names the same keys.
    let der = std::fs::read(s.cert_path()).unwrap();
    let info = sbtc_hsm_signer::peer::cert::parse(&der).unwrap();
    assert_eq!(
        hex::encode(info.identity.serialize()),
        first["identity"].as_str().unwrap()
    );
    assert_eq!(
        hex::encode(info.spki_sha256()),
        first["spki_sha256"].as_str().unwrap()
    );

    // Without the kept file a new certificate is made: same key (pin), new fingerprint.
    std::fs::remove_file(s.cert_path()).unwrap();
    let fresh = card(s);
    assert_eq!(fresh["new_certificate"], true);
    assert_eq!(fresh["spki_sha256"], first["spki_sha256"]);
    assert_ne!(fresh["cert_sha256"], first["cert_sha256"]);

    let text = s.ok(&["peer", "card"]);
    assert!(text.contains(first["identity"].as_str().unwrap()), "{text}");
    let toml = s.ok(&["peer", "card", "--toml"]);
    assert!(toml.starts_with("[[peer.bootstrap]]"), "{toml}");
}

#[test]
fn peer_card_on_a_keystore() {
    check_card(&keystore_signer());
}

#[test]
fn peer_card_on_a_softhsm_token() {
    check_card(&softhsm_signer());
}

#[test]
fn peer_card_without_a_tls_key_says_what_to_do() {
    let s = keystore_signer();
    s.ok(&["keys", "generate", "--role", "identity"]);
    let out = Command::new(env!("CARGO_BIN_EXE_sbtc-hsm-signer"))
        .arg("--config")
        .arg(&s.config)
        .args(["peer", "card"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls"), "{err}");
}
