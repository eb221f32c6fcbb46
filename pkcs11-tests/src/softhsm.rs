//! (pkcs11 helper writes this)
