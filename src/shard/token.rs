//! Address-validation tokens for QUIC Retry: minted when a busy shard
//! answers an Initial with a Retry, checked when the client comes back with
//! it. A token proves the client can receive at its source address (it is
//! bound to the address and port) and carries the original destination
//! connection ID the handshake must echo.
//!
//! Pure crypto over bytes (HMAC-SHA256 with a key that never leaves the
//! shard); no sockets, no connection state. The clock is a parameter so the
//! expiry is testable.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use quiche::ConnectionId;
use ring::hmac;

/// How long a Retry token is accepted after it was minted.
pub const LIFETIME_SECS: u64 = 30;
const MAC_LEN: usize = 32;

/// Mints and validates this shard's tokens.
pub struct RetryTokens {
    key: hmac::Key,
}

impl RetryTokens {
    /// A fresh random key.
    pub fn new() -> std::io::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| std::io::Error::other("random key"))?;
        Ok(Self { key })
    }

    /// `secs(8) | odcid_len(1) | odcid | mac(32 over secs, odcid, peer)`.
    pub fn mint(&self, odcid: &[u8], peer: SocketAddr, now_secs: u64) -> Vec<u8> {
        let mut token = now_secs.to_be_bytes().to_vec();
        token.push(odcid.len() as u8);
        token.extend_from_slice(odcid);
        let mac = hmac::sign(&self.key, &mac_input(&token, peer));
        token.extend_from_slice(mac.as_ref());
        token
    }

    /// The original destination ID of a token this shard minted for
    /// `peer` less than [`LIFETIME_SECS`] ago; `None` for anything else.
    pub fn validate(
        &self,
        token: &[u8],
        peer: SocketAddr,
        now_secs: u64,
    ) -> Option<ConnectionId<'static>> {
        let (body, mac) = token.split_at_checked(token.len().checked_sub(MAC_LEN)?)?;
        hmac::verify(&self.key, &mac_input(body, peer), mac).ok()?;
        let secs = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
        if now_secs.saturating_sub(secs) > LIFETIME_SECS {
            return None;
        }
        let len = *body.get(8)? as usize;
        let odcid = body.get(9..9 + len)?;
        Some(ConnectionId::from_vec(odcid.to_vec()))
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac_input(body: &[u8], peer: SocketAddr) -> Vec<u8> {
    let mut input = body.to_vec();
    match peer {
        SocketAddr::V4(a) => input.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => input.extend_from_slice(&a.ip().octets()),
    }
    input.extend_from_slice(&peer.port().to_be_bytes());
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const ODCID: &[u8] = b"\x01\x02\x03\x04\x05\x06\x07\x08";

    fn peer() -> SocketAddr {
        "192.0.2.7:4433".parse().unwrap()
    }

    #[test]
    fn a_valid_token_gives_back_the_original_id() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, peer(), NOW);
        let odcid = tokens.validate(&token, peer(), NOW + 1).expect("valid");
        assert_eq!(odcid.as_ref(), ODCID);
        // Up to the lifetime, inclusive.
        assert!(tokens
            .validate(&token, peer(), NOW + LIFETIME_SECS)
            .is_some());
        // IPv6 peers too.
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let token = tokens.mint(ODCID, v6, NOW);
        assert!(tokens.validate(&token, v6, NOW).is_some());
    }

    #[test]
    fn a_token_from_another_address_or_port_is_refused() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, peer(), NOW);
        let other_ip: SocketAddr = "192.0.2.8:4433".parse().unwrap();
        let other_port: SocketAddr = "192.0.2.7:4434".parse().unwrap();
        assert!(tokens.validate(&token, other_ip, NOW).is_none());
        assert!(tokens.validate(&token, other_port, NOW).is_none());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, peer(), NOW);
        assert!(tokens
            .validate(&token, peer(), NOW + LIFETIME_SECS + 1)
            .is_none());
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, peer(), NOW);
        for i in 0..token.len() {
            let mut bad = token.clone();
            bad[i] ^= 0x40;
            assert!(tokens.validate(&bad, peer(), NOW).is_none(), "byte {i}");
        }
        // Made fresh by hand: the MAC no longer matches.
        let mut renewed = token.clone();
        renewed[..8].copy_from_slice(&(NOW + 100).to_be_bytes());
        assert!(tokens.validate(&renewed, peer(), NOW + 100).is_none());
        // Another shard's key.
        let other = RetryTokens::new().unwrap();
        assert!(other.validate(&token, peer(), NOW).is_none());
    }

    #[test]
    fn a_truncated_token_is_refused_without_panicking() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, peer(), NOW);
        for len in 0..token.len() {
            assert!(
                tokens.validate(&token[..len], peer(), NOW).is_none(),
                "{len}"
            );
        }
        // A well-signed body too short for its own fields.
        for body in [
            &b""[..],
            b"\x00\x00\x00\x00\x00\x00\x00",
            b"\x00\x00\x00\x00\x00\x00\x00\x00",
        ] {
            let mut short = body.to_vec();
            short.extend_from_slice(hmac::sign(&tokens.key, &mac_input(body, peer())).as_ref());
            assert!(tokens.validate(&short, peer(), 0).is_none(), "{body:?}");
        }
        // An ID length beyond the body.
        let mut long = 0u64.to_be_bytes().to_vec();
        long.push(200);
        let mac = hmac::sign(&tokens.key, &mac_input(&long, peer()));
        long.extend_from_slice(mac.as_ref());
        assert!(tokens.validate(&long, peer(), 0).is_none());
    }
}
