//! Set-up shared by the threshold-signing benchmarks (wsts.rs, e2e.rs).

use std::{path::Path, sync::Arc, thread};

use sbtc_custody::{Custody, KeyKind, KeyLabel, SecretString};
use sbtc_custody_keystore::{KdfParams, Keystore};
use sbtc_hsm_signer::signing::{SighashRequest, SpendKind};

/// `n` keystores (cheap test KDF) in `dir`, each holding a key of every `(label, kind)`.
pub async fn keystores(
    dir: &Path,
    n: usize,
    keys: &[(&KeyLabel, KeyKind)],
) -> Vec<Arc<dyn Custody>> {
    let mut out: Vec<Arc<dyn Custody>> = Vec::with_capacity(n);
    for i in 0..n {
        let ks = Keystore::create_with_passphrase(
            dir.join(format!("s{i}.keystore")),
            &SecretString::new(format!("bench {i}")),
            KdfParams::insecure_for_tests(),
        )
        .await
        .expect("keystore");
        for (label, kind) in keys {
            ks.generate(label, *kind).await.expect("key");
        }
        out.push(Arc::new(ks));
    }
    out
}

/// `m` distinct sighashes, half key spends and half script paths.
pub fn requests(m: usize) -> Vec<SighashRequest> {
    (0..m)
        .map(|i| {
            let mut sighash = [0x5au8; 32];
            sighash[..8].copy_from_slice(&(i as u64).to_be_bytes());
            SighashRequest {
                sighash,
                kind: if i % 2 == 0 {
                    SpendKind::KeySpend { merkle_root: None }
                } else {
                    SpendKind::ScriptPath
                },
            }
        })
        .collect()
}

/// Runs `f` for every signer on its own OS thread with its own single-threaded runtime.
pub fn on_threads<T, F, Fut>(inputs: Vec<T>, f: F) -> Vec<Fut::Output>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future,
    Fut::Output: Send + 'static,
{
    let handles: Vec<_> = inputs
        .into_iter()
        .map(|input| {
            let f = f.clone();
            thread::Builder::new()
                .stack_size(8 << 20)
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(f(input))
                })
                .expect("thread")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("signer thread"))
        .collect()
}
