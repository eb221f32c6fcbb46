//! The conformance suite against the YubiHSM2 backend on the yubihsm crate's MockHsm (in-memory,
//! debug builds only). Every clone of a MockHsm connector talks to the same simulated device, so a
//! "reopen" is a new backend and session on the same device.

use std::sync::Arc;

use pkcs11_tests::conformance::Fixture;
use sbtc_custody::{Custody, SecretString};
use sbtc_custody_yubihsm::{Options, YubiHsmBackend};

async fn fixture() -> Fixture {
    let device = yubihsm::Connector::mockhsm();
    let keep = device.clone();
    Fixture::new(
        move || {
            let device = device.clone();
            async move {
                let backend = tokio::task::spawn_blocking(move || {
                    YubiHsmBackend::with_connector(
                        device,
                        1,
                        SecretString::new("password".into()),
                        Options::default(),
                    )
                })
                .await
                .expect("open task")
                .unwrap_or_else(|e| panic!("open MockHsm: {e}"));
                Arc::new(backend) as Arc<dyn Custody>
            }
        },
        keep,
    )
}

pkcs11_tests::conformance_suite!(fixture());
