//! Black-box tests: the real binary, a temporary config, a real keystore file and a real SoftHSM2 token.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

mod child_softhsm;

struct Signer {
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Signer {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sbtc-hsm-signer"));
        cmd.arg("--config").arg(&self.config).args(args);
        // The default log filter is what operators get.
        cmd.env_remove("SBTC_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run sbtc-hsm-signer")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn write_secret(&self, name: &str, value: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

fn keystore_signer(kdf: &str) -> Signer {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signer.toml");
    let s = Signer {
        config: config.clone(),
        dir,
        env: Vec::new(),
    };
    let pass = s.write_secret("passphrase", "correct horse battery staple");
    let store = s.dir.path().join("keystore");
    std::fs::write(
        &config,
        format!(
            "[custody]\nbackend = \"keystore\"\n[custody.keystore]\npath = \"{}\"\npassphrase_file = \"{}\"\n{kdf}",
            store.display(),
            pass.display()
        ),
    )
    .unwrap();
    s
}

fn softhsm_signer() -> Signer {
    let dir = tempfile::tempdir().unwrap();
    let conf = child_softhsm::init_token(dir.path(), "cli-signer");
    let config = dir.path().join("signer.toml");
    let s = Signer {
        config: config.clone(),
        dir,
        env: vec![("SOFTHSM2_CONF".into(), conf.display().to_string())],
    };
    let pin = s.write_secret("pin", child_softhsm::USER_PIN);
    std::fs::write(
        &config,
        format!(
            "[custody]\nbackend = \"pkcs11\"\n[custody.pkcs11]\nmodule = \"{}\"\ntoken_label = \"cli-signer\"\npin_file = \"{}\"\n",
            child_softhsm::MODULE,
            pin.display()
        ),
    )
    .unwrap();
    s
}

fn generate_all_and_check(s: &Signer, backend: &str) {
    for role in ["identity", "tls", "seal"] {
        let out = s.ok(&["keys", "generate", "--role", role]);
        assert!(
            out.contains(&format!("generated {role} key '{role}'")),
            "{out}"
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&s.ok(&["keys", "check", "--json"])).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["info"]["backend"], backend, "{report:#}");
    assert_eq!(report["health"]["ok"], true, "{report:#}");
    let roles = report["roles"].as_array().unwrap();
    assert_eq!(roles.len(), 3);
    for r in roles {
        assert_eq!(r["ok"], true, "{r:#}");
    }
    let listed: serde_json::Value =
        serde_json::from_str(&s.ok(&["keys", "list", "--json"])).unwrap();
    let labels: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["identity", "seal", "tls"]);
    // The identity key in `keys list` is the one `keys check` tested.
    let id_pk = &listed.as_array().unwrap()[0]["public_key"];
    assert_eq!(&roles[0]["public_key"], id_pk);
    assert_eq!(
        id_pk.as_str().unwrap().len(),
        66,
        "compressed secp256k1 key"
    );

    // Generating over an existing key is refused, and the key is unchanged.
    let out = s.run(&["keys", "generate", "--role", "identity"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key exists") && err.contains("identity"),
        "{err}"
    );
    let again: serde_json::Value =
        serde_json::from_str(&s.ok(&["keys", "list", "--json"])).unwrap();
    assert_eq!(&again[0]["public_key"], id_pk);
}

#[test]
fn keystore_init_generate_check() {
    let s = keystore_signer("");
    let out = s.ok(&["keys", "init"]);
    assert!(out.contains("created keystore"), "{out}");
    let mode = std::fs::metadata(s.dir.path().join("keystore"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    generate_all_and_check(&s, "keystore");

    // A wrong passphrase is a clear error that does not echo the passphrase.
    s.write_secret("passphrase", "wrong passphrase here");
    let out = s.run(&["keys", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("wrong passphrase here"), "{err}");
}

#[test]
fn softhsm_init_generate_check() {
    let s = softhsm_signer();
    let out = s.ok(&["keys", "init"]);
    assert!(
        out.contains("pkcs11 ready") && out.contains("SoftHSM"),
        "{out}"
    );
    generate_all_and_check(&s, "pkcs11");
}

#[test]
fn check_fails_when_a_role_key_is_missing() {
    let s = softhsm_signer();
    s.ok(&["keys", "generate", "--role", "identity"]);
    let out = s.run(&["keys", "check", "--json"]);
    assert!(
        !out.status.success(),
        "a missing tls/seal key must fail the check"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["roles"][0]["ok"], true);
    assert_eq!(report["roles"][1]["ok"], false);
    let why = report["roles"][1]["self_test"].as_str().unwrap();
    assert!(
        why.contains("key not found") && why.contains("keys generate"),
        "{why}"
    );
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signer.toml");
    std::fs::write(&config, "[custody]\nbackend = \"keystore\"\n[custody.keystore]\npath = \"x\"\npasphrase_env = \"P\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sbtc-hsm-signer"))
        .args(["--config", config.to_str().unwrap(), "keys", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pasphrase_env") && err.contains(config.to_str().unwrap()),
        "{err}"
    );
    let missing = Path::new("/nonexistent/signer.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_sbtc-hsm-signer"))
        .args(["--config", missing.to_str().unwrap(), "keys", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config file /nonexistent/signer.toml"),
        "{err}"
    );
}

/// A config with only `[storage]`: the commands that need nothing else work, and every command
/// that needs a missing section says which section and for which command.
#[test]
fn commands_name_the_config_section_they_miss() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("storage-only.toml");
    std::fs::write(&config, "[storage]\nurl = \"memory\"\n").unwrap();
    let s = Signer {
        config,
        dir,
        env: Vec::new(),
    };
    let out = s.ok(&["migrate"]);
    assert!(out.contains("no schema to migrate"), "{out}");
    for (args, command, section) in [
        (&["keys", "list"][..], "keys list", "[custody]"),
        (&["keys", "check"][..], "keys check", "[custody]"),
        (&["peer", "card"][..], "peer card", "[peer]"),
        (&["run", "--ephemeral"][..], "run", "[peer]"),
    ] {
        let out = s.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("`{command}` needs a {section} section")),
            "{args:?}: {err}"
        );
    }
    std::fs::write(&s.config, "").unwrap();
    let out = s.run(&["audit", "verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`audit verify` needs a [storage] section"),
        "{err}"
    );
}
