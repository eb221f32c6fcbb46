//! Stacks principals and addresses: the Clarity serialization the deposit leaf carries, and the
//! c32check address text operators read.
//!
//! INTERFACE SKELETON: the codec arrives with the deposit-scripts work.

/// A Clarity principal: standard (`version`, hash160) or contract (plus a contract name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    Standard {
        version: u8,
        hash160: [u8; 20],
    },
    Contract {
        version: u8,
        hash160: [u8; 20],
        name: String,
    },
}
