//! The store as the audit log of `keys::AuditedCustody`.

use std::sync::Arc;

use async_trait::async_trait;

use super::{AuditEntry, AuditRecord, Storage};
use crate::keys::AuditSink;

/// Appends custody audit entries to a store.
pub struct StorageAuditSink(pub Arc<dyn Storage>);

#[async_trait]
impl AuditSink for StorageAuditSink {
    async fn append(&self, record: &AuditRecord) -> Result<AuditEntry, String> {
        self.0.append_audit(record).await.map_err(|e| e.to_string())
    }

    async fn head(&self) -> Result<Option<(u64, [u8; 32])>, String> {
        self.0.get_audit_head().await.map_err(|e| e.to_string())
    }
}
