//! The custody conformance suite, run unchanged against every backend, and the SoftHSM2 fixture.

pub mod conformance;
pub mod softhsm;
