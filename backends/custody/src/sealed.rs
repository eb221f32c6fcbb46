//! Sealed data: opaque to everyone but the backend that sealed it.

use std::fmt;

/// Ciphertext produced by [`crate::Custody::seal`]. The layout is backend-specific and starts with a
/// format byte, so it can be stored anywhere (database, file) and handed back unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlob(Vec<u8>);

impl SealedBlob {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SealedBlob(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedBlob({} bytes)", self.0.len())
    }
}
