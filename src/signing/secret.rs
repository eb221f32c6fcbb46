//! Overwriting WSTS scalars. `wsts` scalars are `Copy` and do not implement `Zeroize`, so the
//! values we own are overwritten by hand when they are dropped. Copies WSTS makes internally (inside
//! its state machines during a DKG) are outside our reach: docs/security.md says so.

use wsts::curve::scalar::Scalar;

/// Overwrites `s` with zero in a way the optimiser keeps.
pub(crate) fn wipe_scalar(s: &mut Scalar) {
    // SAFETY: `s` is a valid, aligned, exclusive reference; `Scalar` is plain data (`Copy`).
    unsafe { std::ptr::write_volatile(s, Scalar::from(0u32)) };
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}
