//! What one peer may cost us: message size, rate, queue depth and bytes, pending handshakes,
//! certificate lifetime, and what strangers may cost us before they are authenticated.

use std::time::{Duration, Instant};

/// The longest certificate lifetime (not_after - not_before) admitted by default: 30 days.
pub const DEFAULT_MAX_CERT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// Bounds on the peer links. Every buffer that a peer can fill has one of these as its size.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest encoded envelope accepted or sent.
    pub max_message_bytes: usize,
    /// Messages per second accepted from one peer (token bucket), and the bucket size.
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Messages waiting to go to one peer; messages from one peer waiting in the node's inbox are
    /// limited to 4x this.
    pub queue_depth: usize,
    /// Bytes (encoded envelopes) waiting to go to one peer; beyond it new messages to that peer
    /// are dropped and counted (`queue_full`).
    pub queue_bytes_per_peer: usize,
    /// Bytes (encoded envelopes) from one peer waiting in the node's inbox; beyond it that peer's
    /// new messages are dropped and counted (`inbox_peer_full`), other peers' are not affected.
    pub inbox_bytes_per_peer: usize,
    /// The whole TLS handshake, inbound (from the first byte) and outbound.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once; more connections wait in the kernel backlog.
    pub max_pending_handshakes: usize,
    /// Unauthenticated inbound connections (TLS handshake and binding check not finished) from
    /// one source address at once; more are closed at once (`too_many_from_address`). Addresses
    /// that a member's endpoint names literally (an IP, not a DNS name) are exempt.
    pub max_handshakes_per_address: usize,
    /// HSM signatures per second spent on TLS handshakes, both directions (token bucket, burst
    /// the same). Each handshake takes one token before the step that signs. Our own dials
    /// (always to members) may use the last quarter of the bucket; inbound handshakes may not,
    /// and one source address (other than a member's) gets at most a quarter of the rate.
    pub handshake_signatures_per_sec: u32,
    /// The longest certificate lifetime admitted (not_after - not_before, which is also the period
    /// the binding signs); longer ones are refused (`lifetime_too_long`).
    pub max_cert_lifetime: Duration,
    /// Outbound dials (TCP and TLS handshake) in progress at once; the other links wait their
    /// turn. Without it a node of a 150-signer mesh on one machine starts 149 handshakes at once,
    /// most of them time out under the load and are redone (docs/performance.md).
    pub max_concurrent_dials: usize,
    /// Live connections (both directions) with one identity beyond which inbound ones are refused.
    pub max_connections_per_peer: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            rate_per_sec: 2000,
            burst: 4000,
            queue_depth: 1024,
            queue_bytes_per_peer: 32 << 20,
            inbox_bytes_per_peer: 32 << 20,
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 64,
            max_handshakes_per_address: 8,
            handshake_signatures_per_sec: 50,
            max_cert_lifetime: DEFAULT_MAX_CERT_LIFETIME,
            max_concurrent_dials: 16,
            max_connections_per_peer: 4,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Dead links are found by the kernel's TCP keepalive: probes after this much silence, then every
/// [`TCP_KEEPALIVE_INTERVAL`], [`TCP_KEEPALIVE_RETRIES`] unanswered ones close the connection (about
/// a minute in all). The kernel answers them without waking the process.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// HTTP/2 pings, the backstop for a peer whose kernel is alive but whose node is wedged, and for
/// paths that drop TCP keepalives. Each ping wakes both processes and crosses TLS twice: at a
/// 30 s interval a 150-signer mesh on one 2-core machine spent 12% of its CPU on them while the
/// rounds computed (docs/performance.md), hence the long interval.
pub const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(300);
pub const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Turns on TCP keepalive on a peer connection (see [`TCP_KEEPALIVE_IDLE`]); a socket that
/// refuses it still works, it is only found dead later.
pub(crate) fn tcp_keepalive(tcp: &tokio::net::TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keepalive not set on a peer connection");
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_above(0.0)
    }

    /// Takes one token if more than `reserve` would be left: the reserve is kept for others.
    pub fn take_above(&mut self, reserve: f64) -> bool {
        self.refill();
        if self.tokens >= 1.0 + reserve {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token could be taken now (without taking it).
    pub fn has_token(&mut self) -> bool {
        self.refill();
        self.tokens >= 1.0
    }

    /// Whether the bucket is full again (nothing to remember about its user).
    pub fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.burst
    }

    /// How long until a token can be taken above `reserve`.
    pub fn time_until(&mut self, reserve: f64) -> Duration {
        self.refill();
        let missing = (1.0 + reserve - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.rate)
    }
}

/// Exponential backoff with full jitter, so that a whole mesh does not redial in lockstep.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    use rand::Rng;
    let cap = min
        .saturating_mul(1u32 << attempt.min(16))
        .min(max)
        .max(min);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    let min_ms = u64::try_from(min.as_millis()).unwrap_or(0);
    Duration::from_millis(rand::thread_rng().gen_range(min_ms..=millis.max(min_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let mut b = TokenBucket::new(1, 5);
        let allowed = (0..20).filter(|_| b.take()).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn a_reserve_is_left_for_others() {
        let mut b = TokenBucket::new(1, 8);
        let inbound = (0..20).filter(|_| b.take_above(2.0)).count();
        assert_eq!(inbound, 6, "two tokens stay for the reserve");
        assert!(b.time_until(2.0) > Duration::from_millis(500));
        assert_eq!((0..20).filter(|_| b.take()).count(), 2);
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let d = backoff(attempt, min, max);
            assert!(d >= min && d <= max, "{d:?}");
        }
    }
}
