//! What strangers may cost us before they are authenticated: unauthenticated connections per
//! source address, and the HSM signatures spent on TLS handshakes.
//!
//! In TLS 1.3 the server signs its CertificateVerify before it sees the client's certificate, so
//! every ClientHello that reaches that step costs one custody signature, whoever sent it. The
//! [`HandshakeBudget`] is a token bucket in front of those signatures: every handshake (inbound
//! after its ClientHello, outbound before it starts) takes one token first, so the custody
//! signatures spent on handshakes never exceed the bucket (`rate` a second, `rate` saved up).
//!
//! Prioritising: our own dials go only to members, so they may use the whole bucket; inbound
//! handshakes leave the last quarter of it to them. One source address (other than one a member's
//! endpoint names) gets at most a quarter of the rate and [`Limits::max_handshakes_per_address`]
//! handshakes in progress, so a single flooding address cannot use up the budget or the pending
//! handshake slots.
//!
//! [`Limits::max_handshakes_per_address`]: super::Limits::max_handshakes_per_address

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::limits::TokenBucket;

/// Source addresses remembered at once; beyond it, idle ones are forgotten first.
const MAX_TRACKED_ADDRESSES: usize = 4096;
/// Shortest sleep while waiting for a token (so waiters do not spin).
const MIN_WAIT: Duration = Duration::from_millis(5);

/// Why an inbound handshake got no token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoToken {
    /// This source address used its share of the rate.
    AddressRate,
    /// The whole budget is spent until the handshake's deadline.
    Budget,
}

impl NoToken {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            NoToken::AddressRate => "handshake_rate_from_address",
            NoToken::Budget => "handshake_budget",
        }
    }
}

struct Address {
    in_progress: usize,
    bucket: TokenBucket,
}

struct State {
    global: TokenBucket,
    addresses: HashMap<IpAddr, Address>,
}

/// See the module docs.
pub(crate) struct HandshakeBudget {
    state: Mutex<State>,
    /// Tokens of the global bucket that inbound handshakes leave to our own dials.
    reserve: f64,
    per_address_rate: u32,
    max_per_address: usize,
}

impl HandshakeBudget {
    pub(crate) fn new(rate: u32, max_per_address: usize) -> Arc<HandshakeBudget> {
        let rate = rate.max(1);
        // At least 4 tokens, so that a quarter of them is a whole token.
        let burst = rate.max(4);
        Arc::new(HandshakeBudget {
            state: Mutex::new(State {
                global: TokenBucket::new(rate, burst),
                addresses: HashMap::new(),
            }),
            reserve: f64::from(burst) / 4.0,
            per_address_rate: (rate / 4).max(1),
            max_per_address: max_per_address.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_address(&self) -> Address {
        Address {
            in_progress: 0,
            bucket: TokenBucket::new(self.per_address_rate, self.per_address_rate),
        }
    }

    /// An unauthenticated connection from `ip` starts; None if `ip` already has the maximum in
    /// progress. `exempt` (a member's address) skips the per-address limit.
    pub(crate) fn begin_inbound(
        self: &Arc<Self>,
        ip: IpAddr,
        exempt: bool,
    ) -> Option<UnauthenticatedSlot> {
        if exempt {
            return Some(UnauthenticatedSlot { budget: None, ip });
        }
        let mut state = self.lock();
        if !state.addresses.contains_key(&ip) && state.addresses.len() >= MAX_TRACKED_ADDRESSES {
            // Forget idle addresses whose bucket is full (nothing lost), then any idle one.
            state
                .addresses
                .retain(|_, a| a.in_progress > 0 || !a.bucket.is_full());
            if state.addresses.len() >= MAX_TRACKED_ADDRESSES {
                state.addresses.retain(|_, a| a.in_progress > 0);
            }
        }
        let fresh = self.new_address();
        let entry = state.addresses.entry(ip).or_insert(fresh);
        if entry.in_progress >= self.max_per_address {
            return None;
        }
        entry.in_progress += 1;
        Some(UnauthenticatedSlot {
            budget: Some(self.clone()),
            ip,
        })
    }

    /// Waits (at most until `deadline`) for the token of one inbound handshake. A source address
    /// over its share is refused at once; otherwise the handshake waits while only the reserve
    /// for our own dials is left.
    pub(crate) async fn inbound(
        &self,
        ip: IpAddr,
        exempt: bool,
        deadline: Instant,
    ) -> Result<(), NoToken> {
        loop {
            let wait = {
                let mut state = self.lock();
                let State { global, addresses } = &mut *state;
                let address = if exempt { None } else { addresses.get_mut(&ip) };
                match address {
                    Some(a) => {
                        if !a.bucket.has_token() {
                            return Err(NoToken::AddressRate);
                        }
                        if global.take_above(self.reserve) {
                            a.bucket.take();
                            return Ok(());
                        }
                    }
                    None => {
                        if global.take_above(self.reserve) {
                            return Ok(());
                        }
                    }
                }
                global.time_until(self.reserve).max(MIN_WAIT)
            };
            if Instant::now() + wait > deadline {
                return Err(NoToken::Budget);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits (at most until `deadline`) for the token of one of our own dials; false if none
    /// came in time.
    pub(crate) async fn outbound(&self, deadline: Instant) -> bool {
        loop {
            let wait = {
                let mut state = self.lock();
                if state.global.take() {
                    return true;
                }
                state.global.time_until(0.0).max(MIN_WAIT)
            };
            if Instant::now() + wait > deadline {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Unauthenticated connections in progress from `ip` (tests, metrics).
    #[cfg(test)]
    fn in_progress(&self, ip: IpAddr) -> usize {
        self.lock().addresses.get(&ip).map_or(0, |a| a.in_progress)
    }
}

/// One unauthenticated connection counted against its source address; dropped when the
/// handshake and binding check end, either way.
pub(crate) struct UnauthenticatedSlot {
    budget: Option<Arc<HandshakeBudget>>,
    ip: IpAddr,
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            let mut state = budget.lock();
            if let Some(a) = state.addresses.get_mut(&self.ip) {
                a.in_progress = a.in_progress.saturating_sub(1);
            }
        }
    }
}

/// At most one log line a second for events a stranger can cause at will; the rest are counted
/// and the next line says how many were left out.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// Some(number left out since the last line) if a line may be logged now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_second.load(Ordering::Relaxed);
        if now != last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_a_bounded_number_of_slots() {
        let budget = HandshakeBudget::new(100, 3);
        let a = ip("127.0.0.2");
        let slots: Vec<_> = (0..10)
            .filter_map(|_| budget.begin_inbound(a, false))
            .collect();
        assert_eq!(slots.len(), 3);
        assert!(budget.begin_inbound(ip("127.0.0.3"), false).is_some());
        assert!(
            budget.begin_inbound(a, true).is_some(),
            "a member's address"
        );
        drop(slots);
        assert_eq!(budget.in_progress(a), 0);
        assert!(budget.begin_inbound(a, false).is_some());
    }

    #[tokio::test]
    async fn one_address_gets_a_quarter_and_our_dials_keep_a_reserve() {
        // 8 a second: a token every 125 ms, far longer than this test takes.
        let budget = HandshakeBudget::new(8, 100);
        let now = Instant::now();
        let a = ip("127.0.0.2");
        let _slot = budget.begin_inbound(a, false).unwrap();
        let mut from_a = 0;
        while budget.inbound(a, false, now).await.is_ok() {
            from_a += 1;
        }
        assert_eq!(from_a, 2, "a quarter of 8");
        assert_eq!(
            budget.inbound(a, false, now).await,
            Err(NoToken::AddressRate)
        );
        let b = ip("127.0.0.3");
        let _slot = budget.begin_inbound(b, true).unwrap();
        let mut from_b = 0;
        while budget.inbound(b, true, now).await.is_ok() {
            from_b += 1;
        }
        assert_eq!(from_b, 4, "inbound leaves the last 2 tokens");
        let mut ours = 0;
        while budget.outbound(now).await {
            ours += 1;
        }
        assert_eq!(ours, 2, "the reserve is for our own dials");
    }
}
