//! Counters for the peer links: what was refused, dropped and signed, so an operator (and the
//! tests) can see a hostile or slow peer being held off.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

/// Live counters, shared by every task of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Handshake signatures made through `Custody` with the TLS key.
    pub tls_signatures: AtomicU64,
    pub handshakes_accepted: AtomicU64,
    pub handshakes_dialed: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub dial_failures: AtomicU64,
    /// Envelopes delivered to the node's inbox.
    pub received: AtomicU64,
    /// Envelopes queued toward peers.
    pub sent: AtomicU64,
    pub malformed: AtomicU64,
    pub oversized: AtomicU64,
    pub rate_limited: AtomicU64,
    pub bad_signature: AtomicU64,
    pub inbox_full: AtomicU64,
    pub queue_full: AtomicU64,
    /// Connections closed because their peer left the signer set.
    pub removed_disconnects: AtomicU64,
    /// Connections closed because the peer's certificate expired.
    pub expired_disconnects: AtomicU64,
    /// Our own certificate renewed while the node runs.
    pub certificate_renewals: AtomicU64,
    /// Envelopes dropped because their sender's share of the inbox (`inbox_bytes_per_peer`
    /// bytes, 4 x `queue_depth` messages) was full.
    pub inbox_peer_full: AtomicU64,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refused handshake under `reason`.
    pub(crate) fn refuse(&self, reason: &'static str) {
        Self::inc(&self.handshakes_refused);
        let mut map = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(reason).or_default() += 1;
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            tls_signatures: get(&self.tls_signatures),
            handshakes_accepted: get(&self.handshakes_accepted),
            handshakes_dialed: get(&self.handshakes_dialed),
            handshakes_refused: get(&self.handshakes_refused),
            dial_failures: get(&self.dial_failures),
            received: get(&self.received),
            sent: get(&self.sent),
            malformed: get(&self.malformed),
            oversized: get(&self.oversized),
            rate_limited: get(&self.rate_limited),
            bad_signature: get(&self.bad_signature),
            inbox_full: get(&self.inbox_full),
            queue_full: get(&self.queue_full),
            removed_disconnects: get(&self.removed_disconnects),
            expired_disconnects: get(&self.expired_disconnects),
            certificate_renewals: get(&self.certificate_renewals),
            inbox_peer_full: get(&self.inbox_peer_full),
            refusals: self
                .refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    pub tls_signatures: u64,
    pub handshakes_accepted: u64,
    pub handshakes_dialed: u64,
    pub handshakes_refused: u64,
    pub dial_failures: u64,
    pub received: u64,
    pub sent: u64,
    pub malformed: u64,
    pub oversized: u64,
    pub rate_limited: u64,
    pub bad_signature: u64,
    pub inbox_full: u64,
    pub queue_full: u64,
    pub removed_disconnects: u64,
    pub expired_disconnects: u64,
    pub certificate_renewals: u64,
    pub inbox_peer_full: u64,
    /// Refused handshakes by reason (`not_in_set`, `bad_binding`, `expired`, `lifetime_too_long`,
    /// `no_certificate`, `incompatible_tls`, `too_many_from_address`, `handshake_budget`, ...).
    pub refusals: BTreeMap<String, u64>,
}

impl MetricsSnapshot {
    pub fn refused(&self, reason: &str) -> u64 {
        self.refusals.get(reason).copied().unwrap_or(0)
    }
}
