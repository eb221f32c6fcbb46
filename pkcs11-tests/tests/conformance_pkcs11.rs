//! The conformance suite against a PKCS#11 token: a fresh SoftHSM2 token per check, or the vendor
//! token named by `PKCS11_MODULE`, `PKCS11_TOKEN_LABEL` and `PKCS11_PIN`.

use std::sync::Arc;

use pkcs11_tests::{conformance::Fixture, softhsm};
use sbtc_custody::Custody;

async fn fixture() -> Fixture {
    let token = softhsm::token();
    let config = token.config();
    // On a shared vendor token, keys of different runs must not collide.
    let prefix = if token.vendor {
        format!("t{}-", std::process::id() % 100_000)
    } else {
        String::new()
    };
    Fixture::new(
        move || {
            let config = config.clone();
            async move {
                let backend =
                    tokio::task::spawn_blocking(move || sbtc_custody_pkcs11::open(&config))
                        .await
                        .expect("open task")
                        .unwrap_or_else(|e| panic!("open token: {e}"));
                Arc::new(backend) as Arc<dyn Custody>
            }
        },
        token,
    )
    .with_label_prefix(&prefix)
}

pkcs11_tests::conformance_suite!(fixture());
