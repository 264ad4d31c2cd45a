//! Address-validation tokens for QUIC Retry (RFC 9000 §8.1.2–8.1.4):
//! minted when a busy shard answers an Initial with a Retry, checked when
//! the client comes back with it. A token proves the client can receive at
//! its source address (it is bound to the address and port), carries the
//! original destination connection ID the handshake must echo, and is bound
//! to the connection ID the Retry gave the client: it admits that one
//! connection only, never a connection under another ID, and only for
//! [`LIFETIME_SECS`].
//!
//! Pure crypto over bytes (HMAC-SHA256 with a key that never leaves the
//! shard); no sockets, no connection state. The clock is a parameter so the
//! expiry is testable.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use quiche::ConnectionId;
use ring::hmac;

/// How long a Retry token is accepted after it was minted: one round trip
/// is all a client needs (RFC 9000 §8.1.3 asks for a short lifetime).
pub const LIFETIME_SECS: u64 = 10;
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

    /// `secs(8) | odcid_len(1) | odcid | mac(32 over secs, odcid, the
    /// Retry's connection ID, peer)`. `retry_scid` is the ID the Retry
    /// gives the client: its next Initial must carry it as destination.
    pub fn mint(
        &self,
        odcid: &[u8],
        retry_scid: &[u8],
        peer: SocketAddr,
        now_secs: u64,
    ) -> Vec<u8> {
        let mut token = now_secs.to_be_bytes().to_vec();
        token.push(odcid.len().min(u8::MAX as usize) as u8);
        token.extend_from_slice(odcid);
        let mac = hmac::sign(&self.key, &mac_input(&token, retry_scid, peer));
        token.extend_from_slice(mac.as_ref());
        token
    }

    /// The original destination ID of a token this shard minted for
    /// `peer` and the connection ID `dcid` less than [`LIFETIME_SECS`]
    /// ago; `None` for anything else.
    pub fn validate(
        &self,
        token: &[u8],
        dcid: &[u8],
        peer: SocketAddr,
        now_secs: u64,
    ) -> Option<ConnectionId<'static>> {
        let (body, mac) = token.split_at_checked(token.len().checked_sub(MAC_LEN)?)?;
        hmac::verify(&self.key, &mac_input(body, dcid, peer), mac).ok()?;
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

fn mac_input(body: &[u8], dcid: &[u8], peer: SocketAddr) -> Vec<u8> {
    let mut input = body.to_vec();
    input.push(dcid.len().min(u8::MAX as usize) as u8);
    input.extend_from_slice(dcid);
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
    /// The ID the Retry gave the client.
    const SCID: &[u8] = b"retry-scid-0123456789";

    fn peer() -> SocketAddr {
        "192.0.2.7:4433".parse().unwrap()
    }

    #[test]
    fn a_valid_token_gives_back_the_original_id() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, SCID, peer(), NOW);
        let odcid = tokens
            .validate(&token, SCID, peer(), NOW + 1)
            .expect("valid");
        assert_eq!(odcid.as_ref(), ODCID);
        // Up to the lifetime, inclusive.
        assert!(tokens
            .validate(&token, SCID, peer(), NOW + LIFETIME_SECS)
            .is_some());
        // IPv6 peers too.
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let token = tokens.mint(ODCID, SCID, v6, NOW);
        assert!(tokens.validate(&token, SCID, v6, NOW).is_some());
    }

    #[test]
    fn a_token_from_another_address_or_port_is_refused() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, SCID, peer(), NOW);
        let other_ip: SocketAddr = "192.0.2.8:4433".parse().unwrap();
        let other_port: SocketAddr = "192.0.2.7:4434".parse().unwrap();
        assert!(tokens.validate(&token, SCID, other_ip, NOW).is_none());
        assert!(tokens.validate(&token, SCID, other_port, NOW).is_none());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, SCID, peer(), NOW);
        assert!(tokens
            .validate(&token, SCID, peer(), NOW + LIFETIME_SECS + 1)
            .is_none());
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, SCID, peer(), NOW);
        for i in 0..token.len() {
            let mut bad = token.clone();
            bad[i] ^= 0x40;
            assert!(
                tokens.validate(&bad, SCID, peer(), NOW).is_none(),
                "byte {i}"
            );
        }
        // Made fresh by hand: the MAC no longer matches.
        let mut renewed = token.clone();
        renewed[..8].copy_from_slice(&(NOW + 100).to_be_bytes());
        assert!(tokens.validate(&renewed, SCID, peer(), NOW + 100).is_none());
        // Another shard's key.
        let other = RetryTokens::new().unwrap();
        assert!(other.validate(&token, SCID, peer(), NOW).is_none());
    }

    #[test]
    fn a_truncated_token_is_refused_without_panicking() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, SCID, peer(), NOW);
        for len in 0..token.len() {
            assert!(
                tokens.validate(&token[..len], SCID, peer(), NOW).is_none(),
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
            short.extend_from_slice(
                hmac::sign(&tokens.key, &mac_input(body, SCID, peer())).as_ref(),
            );
            assert!(
                tokens.validate(&short, SCID, peer(), 0).is_none(),
                "{body:?}"
            );
        }
        // An ID length beyond the body.
        let mut long = 0u64.to_be_bytes().to_vec();
        long.push(200);
        let mac = hmac::sign(&tokens.key, &mac_input(&long, SCID, peer()));
        long.extend_from_slice(mac.as_ref());
        assert!(tokens.validate(&long, SCID, peer(), 0).is_none());
    }

    #[test]
    fn a_token_admits_only_the_connection_id_its_retry_gave() {
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, SCID, peer(), NOW);
        assert!(tokens.validate(&token, SCID, peer(), NOW).is_some());
        // Replayed under any other destination ID (a new connection), it
        // is refused: one token, one connection.
        for other in [&b""[..], b"retry-scid-0123456788", ODCID, &SCID[..19]] {
            assert!(
                tokens.validate(&token, other, peer(), NOW).is_none(),
                "{other:?}"
            );
        }
        // Nor can its original ID be swapped: the MAC covers it.
        let mut swapped = token.clone();
        swapped[9] ^= 1;
        assert!(tokens.validate(&swapped, SCID, peer(), NOW).is_none());
    }

    #[test]
    fn tokens_are_short_lived() {
        const { assert!(LIFETIME_SECS <= 10, "a Retry token needs one round trip") };
        let tokens = RetryTokens::new().unwrap();
        let token = tokens.mint(ODCID, SCID, peer(), NOW);
        // A clock stepped back a little still accepts it.
        assert!(tokens.validate(&token, SCID, peer(), NOW - 5).is_some());
    }
}
