//! Opens the configured custody backend. The rest of the signer sees only `Arc<dyn Custody>`,
//! wrapped in the audit log by the node and the commands that use keys.

use std::sync::Arc;

use sbtc_custody::{BackendKind, Custody, Error, ErrorKind, Operation};

use super::CustodyConfig;

#[cfg_attr(
    all(feature = "pkcs11", feature = "yubihsm", feature = "keystore"),
    allow(dead_code)
)]
fn missing_feature(backend: BackendKind) -> Error {
    Error::new(backend, Operation::Open, ErrorKind::Config).detail(format!(
        "this build of sbtc-hsm-signer lacks the `{backend}` feature; rebuild with --features {backend}"
    ))
}

fn missing_section(backend: BackendKind) -> Error {
    Error::new(backend, Operation::Open, ErrorKind::Config)
        .detail(format!("no [custody.{backend}] section in the config"))
}

/// Opens the backend named by `[custody] backend`.
pub async fn open(config: &CustodyConfig) -> Result<Arc<dyn Custody>, Error> {
    match config.backend {
        BackendKind::Pkcs11 => {
            let Some(_section) = &config.pkcs11 else {
                return Err(missing_section(BackendKind::Pkcs11));
            };
            #[cfg(feature = "pkcs11")]
            // Opening loads the module and logs in: blocking calls.
            return Ok(Arc::new(tokio::task::block_in_place(|| {
                sbtc_custody_pkcs11::open(_section)
            })?));
            #[cfg(not(feature = "pkcs11"))]
            Err(missing_feature(BackendKind::Pkcs11))
        }
        BackendKind::YubiHsm => {
            let Some(_section) = &config.yubihsm else {
                return Err(missing_section(BackendKind::YubiHsm));
            };
            #[cfg(feature = "yubihsm")]
            return Ok(Arc::new(tokio::task::block_in_place(|| {
                sbtc_custody_yubihsm::open(_section)
            })?));
            #[cfg(not(feature = "yubihsm"))]
            Err(missing_feature(BackendKind::YubiHsm))
        }
        BackendKind::Keystore => {
            let Some(_section) = &config.keystore else {
                return Err(missing_section(BackendKind::Keystore));
            };
            #[cfg(feature = "keystore")]
            return Ok(Arc::new(
                sbtc_custody_keystore::Keystore::open(_section).await?,
            ));
            #[cfg(not(feature = "keystore"))]
            Err(missing_feature(BackendKind::Keystore))
        }
    }
}

/// `keys init`: creates a keystore file, or checks that an HSM token or device can be used.
/// Returns what was done, for the operator.
pub async fn init(config: &CustodyConfig) -> Result<String, Error> {
    match config.backend {
        BackendKind::Keystore => {
            let Some(section) = &config.keystore else {
                return Err(missing_section(BackendKind::Keystore));
            };
            create_keystore(section).await
        }
        backend => {
            let custody = open(config).await?;
            let info = custody.info().await?;
            let health = custody.health().await?;
            if !health.ok {
                return Err(
                    Error::new(backend, Operation::Health, ErrorKind::Device).detail(health.detail)
                );
            }
            Ok(format!(
                "{backend} ready: {} {} serial {} (version {}); keys are generated with `keys generate`",
                info.manufacturer, info.model, info.serial, info.version
            ))
        }
    }
}

#[cfg(feature = "keystore")]
async fn create_keystore(section: &super::KeystoreConfig) -> Result<String, Error> {
    sbtc_custody_keystore::Keystore::create(section).await?;
    Ok(format!(
        "created keystore file {} (mode 0600)",
        section.path.display()
    ))
}

#[cfg(not(feature = "keystore"))]
async fn create_keystore(_section: &super::KeystoreConfig) -> Result<String, Error> {
    Err(missing_feature(BackendKind::Keystore))
}
