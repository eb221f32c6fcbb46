//! A bounded pool for blocking device calls, so that async tasks never block the runtime and a
//! flood of requests cannot open more device sessions than the device allows.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use crate::{BackendKind, Error, ErrorKind, Operation, Result};

#[derive(Clone, Debug)]
pub struct BlockingPool {
    permits: Arc<Semaphore>,
    size: usize,
    wait: Duration,
}

impl BlockingPool {
    /// At most `size` calls run at once; a caller waits at most `wait` for its turn.
    pub fn new(size: usize, wait: Duration) -> Self {
        let size = size.max(1);
        BlockingPool {
            permits: Arc::new(Semaphore::new(size)),
            size,
            wait,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` on tokio's blocking threads once a slot is free.
    pub async fn run<T, F>(&self, backend: BackendKind, op: Operation, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                Error::new(backend, op, ErrorKind::Busy).detail(format!(
                    "all {} device slots stayed busy for {:?}",
                    self.size, self.wait
                ))
            })?
            .map_err(|_| Error::new(backend, op, ErrorKind::Internal).detail("pool closed"))?;
        // On a multi-thread runtime the call runs right here, with the worker's other tasks handed
        // to another thread: no thread hop, which costs more than a fast device call. Elsewhere
        // (a current-thread runtime) it goes to tokio's blocking threads.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let guarded = move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            drop(permit);
            out
        };
        let outcome = if multi_thread {
            tokio::task::block_in_place(guarded)
        } else {
            match tokio::task::spawn_blocking(guarded).await {
                Ok(out) => out,
                Err(e) => {
                    return Err(Error::new(backend, op, ErrorKind::Internal)
                        .detail(format!("the device call was cancelled: {e}")))
                }
            }
        };
        outcome.unwrap_or_else(|_| {
            Err(Error::new(backend, op, ErrorKind::Internal)
                .detail("the device call panicked; the backend stays usable"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn panic_then_work() {
        let pool = BlockingPool::new(1, Duration::from_secs(5));
        let err = pool
            .run::<(), _>(BackendKind::YubiHsm, Operation::Seal, || panic!("mock"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        let ok = pool
            .run(BackendKind::YubiHsm, Operation::Seal, || Ok(5))
            .await;
        assert_eq!(ok.unwrap(), 5, "the pool stays usable after a panic");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn panics_become_errors_on_a_multi_thread_runtime() {
        panic_then_work().await;
    }

    #[tokio::test]
    async fn panics_become_errors_on_a_current_thread_runtime() {
        panic_then_work().await;
    }
}
