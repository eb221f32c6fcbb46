//! The conformance suite against the encrypted keystore file.

use std::sync::Arc;

use pkcs11_tests::conformance::Fixture;
use sbtc_custody::{Custody, SecretString};
use sbtc_custody_keystore::{KdfParams, Keystore, OpenOptions};

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keystore");
    let pass = SecretString::new("conformance passphrase".into());
    // A cheap KDF keeps the suite fast; the production floor has its own test in the backend.
    Keystore::create_with_passphrase(&path, &pass, KdfParams::insecure_for_tests())
        .await
        .expect("create keystore");
    Fixture::new(
        move || {
            let path = path.clone();
            let pass = pass.clone();
            async move {
                let ks = Keystore::open_with_options(&path, &pass, &OpenOptions::insecure_test())
                    .await
                    .expect("open keystore");
                Arc::new(ks) as Arc<dyn Custody>
            }
        },
        dir,
    )
}

pkcs11_tests::conformance_suite!(fixture());
