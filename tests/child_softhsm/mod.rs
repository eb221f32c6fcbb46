//! A SoftHSM2 token in a private token dir, for tests that run the signer binary as a child
//! process (the child reads `SOFTHSM2_CONF`; this test process never loads the module).

use std::{path::Path, path::PathBuf, process::Command};

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const USER_PIN: &str = "98765432";
const SO_PIN: &str = "12345678";

/// Creates `dir/tokens`, `dir/softhsm2.conf` and a token labelled `label` with [`USER_PIN`];
/// returns the conf path to pass as `SOFTHSM2_CONF`.
pub fn init_token(dir: &Path, label: &str) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .unwrap();
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
        .output()
        .expect("softhsm2-util (apt install softhsm2)");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    conf
}
