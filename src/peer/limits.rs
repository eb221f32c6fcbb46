//! What one peer may cost us: message size, rate, queue depth, pending handshakes.

use std::time::{Duration, Instant};

/// Bounds on the peer links. Every buffer that a peer can fill has one of these as its size.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest encoded envelope accepted or sent.
    pub max_message_bytes: usize,
    /// Messages per second accepted from one peer (token bucket), and the bucket size.
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Messages waiting to go to one peer; the inbox toward the node holds 4x this.
    pub queue_depth: usize,
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once; more connections wait in the kernel backlog.
    pub max_pending_handshakes: usize,
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
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 64,
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

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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
    fn backoff_grows_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let d = backoff(attempt, min, max);
            assert!(d >= min && d <= max, "{d:?}");
        }
    }
}
