//! Keys as the rest of the signer sees them: opening custody, the audited `Custody` wrapper, the
//! one door for identity-key signatures, the signer set and the aggregate key.

pub mod aggregate_key;

pub use aggregate_key::{AggregateKey, InvalidAggregateKey};
