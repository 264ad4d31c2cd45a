//! Stateless resets (RFC 9000 §10.3): the token each of our connection IDs
//! carries, and the answer to a short-header packet for a connection this
//! shard does not know (after a restart, or a connection long forgotten),
//! which tells the client at once that its connection is gone.
//!
//! The key is derived from the TLS private key, so every shard and every
//! restart of the node derive the same tokens: a client whose connection
//! died with the previous process, or whose datagrams the kernel now steers
//! to another shard, still recognises the reset. Loops and amplification
//! (§10.3.3): a reset is always smaller than the packet that triggered it
//! (so two endpoints answering each other's resets run out of bytes), none
//! answers a datagram under 22 bytes (it could itself be a minimal reset),
//! and each shard sends at most `--stateless-resets-per-second`.

use std::cell::Cell;

use ring::hmac;
use ring::rand::SecureRandom;

/// The smallest stateless reset: 5 unpredictable bytes and the token.
pub const MIN_RESET: usize = 21;
/// The size of our resets (when the trigger is larger): like a short
/// packet, and nothing to amplify.
const RESET_LEN: usize = 43;
const TOKEN_LEN: usize = 16;

pub struct StatelessResets {
    key: hmac::Key,
    rng: ring::rand::SystemRandom,
    per_second: u32,
    /// The second the budget counts in, and what is left of it.
    second: Cell<u64>,
    left: Cell<u32>,
}

impl StatelessResets {
    /// Tokens keyed by `secret` (the node's: see the module comment); at
    /// most `per_second` resets sent per second (0: none).
    pub fn new(secret: &[u8], per_second: u32) -> Self {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, b"vimanad QUIC stateless reset v1");
        let key = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&derive, secret).as_ref());
        Self {
            key,
            rng: ring::rand::SystemRandom::new(),
            per_second,
            second: Cell::new(0),
            left: Cell::new(0),
        }
    }

    /// The stateless reset token of connection ID `cid` (what the
    /// connection advertises, and what a reset for it ends with).
    pub fn token(&self, cid: &[u8]) -> u128 {
        let tag = hmac::sign(&self.key, cid);
        let mut bytes = [0u8; TOKEN_LEN];
        bytes.copy_from_slice(&tag.as_ref()[..TOKEN_LEN]);
        u128::from_be_bytes(bytes)
    }

    /// The reset to send for a short-header datagram of `len` bytes to the
    /// unknown connection `dcid` at second `now_secs`; `None` when the
    /// rules above forbid one or the budget is spent.
    pub fn reply(&self, dcid: &[u8], len: usize, now_secs: u64) -> Option<Vec<u8>> {
        if len <= MIN_RESET || !self.spend(now_secs) {
            return None;
        }
        let size = (len - 1).min(RESET_LEN);
        let mut out = vec![0u8; size];
        self.rng.fill(&mut out[..size - TOKEN_LEN]).ok()?;
        // A short header: form bit 0, fixed bit 1, the rest unpredictable.
        out[0] = 0x40 | (out[0] & 0x3f);
        out[size - TOKEN_LEN..].copy_from_slice(&self.token(dcid).to_be_bytes());
        Some(out)
    }

    fn spend(&self, now_secs: u64) -> bool {
        if self.second.get() != now_secs {
            self.second.set(now_secs);
            self.left.set(self.per_second);
        }
        match self.left.get() {
            0 => false,
            n => {
                self.left.set(n - 1);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &[u8] = b"01234567890123456789";

    #[test]
    fn a_reset_is_smaller_than_its_trigger_and_ends_with_the_token() {
        let resets = StatelessResets::new(b"secret", 1000);
        for len in [22, 30, 43, 44, 100, 1350] {
            let out = resets.reply(CID, len, 1).expect("a reset");
            assert!(
                out.len() < len && out.len() >= MIN_RESET,
                "{len}: {}",
                out.len()
            );
            assert_eq!(out[0] & 0xc0, 0x40, "looks like a short header");
            assert_eq!(
                out[out.len() - TOKEN_LEN..],
                resets.token(CID).to_be_bytes()
            );
        }
        // Never for a datagram that could itself be a minimal reset.
        for len in 0..=MIN_RESET {
            assert!(resets.reply(CID, len, 1).is_none(), "{len}");
        }
    }

    #[test]
    fn tokens_are_the_same_for_the_same_secret_only() {
        let a = StatelessResets::new(b"secret", 1);
        let b = StatelessResets::new(b"secret", 1);
        let c = StatelessResets::new(b"other", 1);
        assert_eq!(a.token(CID), b.token(CID));
        assert_ne!(a.token(CID), c.token(CID));
        assert_ne!(a.token(CID), a.token(b"another id"));
    }

    #[test]
    fn resets_are_rate_limited_per_second() {
        let resets = StatelessResets::new(b"secret", 3);
        let sent = (0..10)
            .filter(|_| resets.reply(CID, 100, 7).is_some())
            .count();
        assert_eq!(sent, 3);
        assert!(
            resets.reply(CID, 100, 8).is_some(),
            "a new second, a new budget"
        );
        let off = StatelessResets::new(b"secret", 0);
        assert!(off.reply(CID, 100, 7).is_none());
    }
}
