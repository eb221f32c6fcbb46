//! Set-up shared by the threshold-signing benchmarks (wsts.rs, e2e.rs).

use std::thread;

use sbtc_hsm_signer::signing::{SighashRequest, SpendKind};

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
