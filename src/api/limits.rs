//! Per-client rate limits: a token bucket per key (a client address, or a peer's identity key)
//! in a table of bounded size that forgets the oldest client when full, so a flood of new
//! addresses costs memory once, not without end.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets: `per_minute` tokens a minute, at most `burst` saved up, for at most
/// `max_clients` keys.
pub struct RateLimiter<K> {
    per_sec: f64,
    burst: f64,
    max_clients: usize,
    table: Mutex<Table<K>>,
}

struct Table<K> {
    buckets: HashMap<K, Bucket>,
    /// Keys in the order they entered the table; the front is evicted first.
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(per_minute: u32, burst: u32, max_clients: usize) -> RateLimiter<K> {
        RateLimiter {
            per_sec: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            max_clients: max_clients.max(1),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// Takes one token for `key`; when there is none, says how long until there is one.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !t.buckets.contains_key(key) {
            while t.buckets.len() >= self.max_clients {
                let Some(old) = t.order.pop_front() else {
                    break;
                };
                t.buckets.remove(&old);
            }
            t.buckets.insert(
                key.clone(),
                Bucket {
                    tokens: self.burst,
                    last: now,
                },
            );
            t.order.push_back(key.clone());
        }
        let Some(b) = t.buckets.get_mut(key) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }

    /// Keys held now (at most `max_clients`).
    pub fn clients(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .buckets
            .len()
    }
}

/// The rate-limit key of a client address: IPv4 as is, IPv6 by its /64 (one subscriber usually
/// holds a whole /64, so counting single IPv6 addresses would not limit anyone).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_the_table_stays_bounded() {
        let rl = RateLimiter::new(60, 3, 2);
        let t0 = Instant::now();
        for _ in 0..3 {
            rl.check_at(&1u32, t0).unwrap();
        }
        let wait = rl.check_at(&1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // Another client has its own bucket.
        rl.check_at(&2, t0).unwrap();
        let t1 = t0 + Duration::from_secs(1);
        rl.check_at(&1, t1).unwrap();
        assert!(rl.check_at(&1, t1).is_err());
        // A third client evicts the oldest (1), which then starts afresh.
        rl.check_at(&3, t1).unwrap();
        assert_eq!(rl.clients(), 2);
        rl.check_at(&1, t1).unwrap();
        assert_eq!(rl.clients(), 2);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
