//! The shard's per-source accounting: how many connections each client
//! address holds on this shard, in handshake and in total, so that one
//! address cannot fill the connection table (`--max-handshakes-per-source`,
//! `--max-connections-per-source`).
//!
//! A source is an IPv4 address, or an IPv6 /64 (one subscriber's prefix:
//! counting single IPv6 addresses would let one host take 2^64 quotas).
//! IPv4-mapped IPv6 addresses (a dual-stack socket's view of IPv4 clients)
//! count as the IPv4 address.
//!
//! Per shard, like everything on a shard: the kernel hashes each 4-tuple
//! (SO_REUSEPORT) to one shard, so one address using many ports spreads
//! over the shards and may hold up to the limit on each of them (the
//! node-wide bound is the limit times the shard count). No lock, no
//! cross-core state; entries exist only while the source holds a
//! connection, so the table is bounded by the connection table.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::pool::metrics::Drop;

/// Whom a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(addr: SocketAddr) -> Self {
        match addr.ip().to_canonical() {
            // As ::ffff:a.b.c.d, whose low 64 bits never equal a /64 key's.
            IpAddr::V4(v4) => Source((0xffff << 32) | u32::from(v4) as u128),
            // The /64 prefix, tagged so that it never equals an IPv4 key.
            IpAddr::V6(v6) => Source((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Usage {
    handshakes: u32,
    total: u32,
}

/// The limits and the counts of one shard.
pub struct Sources {
    max_handshakes: u32,
    max_total: u32,
    usage: RefCell<HashMap<Source, Usage>>,
}

impl Sources {
    /// `0` means no limit.
    pub fn new(max_handshakes: usize, max_total: usize) -> Self {
        let cap = |n: usize| match n {
            0 => u32::MAX,
            n => n.min(u32::MAX as usize) as u32,
        };
        Self {
            max_handshakes: cap(max_handshakes),
            max_total: cap(max_total),
            usage: RefCell::new(HashMap::new()),
        }
    }

    /// Whether `source` may open one more connection.
    pub fn check(&self, source: Source) -> Result<(), Drop> {
        let usage = self
            .usage
            .borrow()
            .get(&source)
            .copied()
            .unwrap_or_default();
        if usage.total >= self.max_total {
            Err(Drop::SourceLimit)
        } else if usage.handshakes >= self.max_handshakes {
            Err(Drop::SourceHandshakeLimit)
        } else {
            Ok(())
        }
    }

    /// A connection from `source` began its handshake.
    pub fn opened(&self, source: Source) {
        let mut usage = self.usage.borrow_mut();
        let u = usage.entry(source).or_default();
        u.handshakes = u.handshakes.saturating_add(1);
        u.total = u.total.saturating_add(1);
    }

    /// A connection from `source` completed its handshake.
    pub fn established(&self, source: Source) {
        if let Some(u) = self.usage.borrow_mut().get_mut(&source) {
            u.handshakes = u.handshakes.saturating_sub(1);
        }
    }

    /// A connection from `source` is gone (`handshaking`: before its
    /// handshake completed).
    pub fn closed(&self, source: Source, handshaking: bool) {
        let mut usage = self.usage.borrow_mut();
        if let Some(u) = usage.get_mut(&source) {
            if handshaking {
                u.handshakes = u.handshakes.saturating_sub(1);
            }
            u.total = u.total.saturating_sub(1);
            if u.total == 0 {
                usage.remove(&source);
            }
        }
    }

    /// Sources holding a connection now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.usage.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn one_source_is_held_to_its_limits() {
        let sources = Sources::new(2, 3);
        let a = src("192.0.2.1:1000");
        for _ in 0..2 {
            sources.check(a).unwrap();
            sources.opened(a);
        }
        assert_eq!(sources.check(a), Err(Drop::SourceHandshakeLimit));
        // Another port of the same address is the same source; another
        // address is not.
        assert_eq!(
            sources.check(src("192.0.2.1:2000")),
            Err(Drop::SourceHandshakeLimit)
        );
        sources.check(src("192.0.2.2:1000")).unwrap();
        sources.established(a);
        sources.check(a).unwrap();
        sources.opened(a);
        assert_eq!(sources.check(a), Err(Drop::SourceLimit));
        sources.closed(a, true);
        sources.closed(a, true);
        sources.closed(a, false);
        assert_eq!(sources.len(), 0, "an idle source leaves no entry");
        sources.check(a).unwrap();
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(src("[2001:db8:1:2::1]:1"), src("[2001:db8:1:2:ffff::9]:2"));
        assert_ne!(src("[2001:db8:1:2::1]:1"), src("[2001:db8:1:3::1]:1"));
        assert_eq!(src("[::ffff:192.0.2.1]:443"), src("192.0.2.1:9"));
        assert_ne!(src("0.0.0.1:1"), src("[::1]:1"));
    }

    #[test]
    fn zero_means_unlimited_and_counts_never_underflow() {
        let sources = Sources::new(0, 0);
        let a = src("192.0.2.1:1");
        for _ in 0..1000 {
            sources.opened(a);
        }
        sources.check(a).unwrap();
        let b = src("192.0.2.9:1");
        sources.closed(b, true);
        sources.established(b);
        assert_eq!(sources.len(), 1);
    }
}
