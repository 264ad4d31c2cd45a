//! Admission: what a shard does with a datagram for no connection it has.
//! Version negotiation, the connection limits (per shard and per source,
//! sources.rs), address validation with Retry once the shard is busy or a
//! flood of handshakes is under way (tokens in token.rs), stateless resets
//! for short-header packets (reset.rs), and our connection IDs (an HMAC of
//! the client's first destination ID, so a client's retransmitted Initials
//! find the same connection).
//!
//! Nothing is ever sent in answer to a datagram under 1,200 bytes but a
//! stateless reset, which is always smaller than its trigger (RFC 9000
//! §14.1, §10.3): no reflection amplification.
//!
//! Decides and builds the `quiche::Connection`; the endpoint owns the
//! connection map and the tasks. No sockets here: a refusal that needs an
//! answer returns the packet to send.

use std::cell::RefCell;
use std::net::SocketAddr;

use quiche::ConnectionId;
use ring::hmac;

use super::reset::StatelessResets;
use super::sources::{Source, Sources};
use super::token::{self, RetryTokens};
use crate::pool::metrics::Drop;

/// Our connection IDs' length.
pub const CONN_ID_LEN: usize = quiche::MAX_CONN_ID_LEN;
/// The smallest datagram that may carry an Initial, and the smallest one
/// answered with a Version Negotiation or a Retry (RFC 9000 §14.1).
pub const MIN_INITIAL_DATAGRAM: usize = 1200;
const MAX_DATAGRAM: usize = super::MAX_DATAGRAM;

/// Why a datagram got no connection.
#[derive(Debug)]
pub enum Refused {
    /// A stateless answer.
    Reply(Vec<u8>, Reply),
    Drop(Drop),
}

/// Which stateless answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    VersionNegotiation,
    /// `flood`: asked because of the handshakes in progress, not the
    /// connection count.
    Retry {
        flood: bool,
    },
    StatelessReset,
}

/// A shard's admission limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections above which every new client must pass a Retry.
    pub retry_above: usize,
    /// Handshakes in progress above which every new client must pass a
    /// Retry (a handshake flood switches address validation on).
    pub retry_handshakes_above: usize,
    pub max_handshakes_per_source: usize,
    pub max_connections_per_source: usize,
    pub stateless_resets_per_second: u32,
}

/// What the shard holds when a datagram comes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub connections: usize,
    pub handshakes: usize,
    pub draining: bool,
}

/// A new connection: the ID to file it under, quiche's state, and the
/// source it counts against.
pub struct Accepted {
    pub scid: ConnectionId<'static>,
    pub quic: quiche::Connection,
    pub source: Source,
}

pub struct Acceptor {
    quic_config: RefCell<quiche::Config>,
    /// Derives our connection IDs.
    ids: hmac::Key,
    tokens: RetryTokens,
    resets: StatelessResets,
    sources: Sources,
    local: SocketAddr,
    limits: Limits,
}

impl Acceptor {
    /// `secret` keys the stateless reset tokens (reset.rs).
    pub fn new(
        quic_config: quiche::Config,
        local: SocketAddr,
        limits: Limits,
        secret: &[u8],
    ) -> std::io::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let ids = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| std::io::Error::other("random key"))?;
        Ok(Self {
            quic_config: RefCell::new(quic_config),
            ids,
            tokens: RetryTokens::new()?,
            resets: StatelessResets::new(secret, limits.stateless_resets_per_second),
            sources: Sources::new(
                limits.max_handshakes_per_source,
                limits.max_connections_per_source,
            ),
            local,
            limits,
        })
    }

    /// Our connection ID for a client's first destination ID.
    pub fn conn_id_for(&self, dcid: &[u8]) -> ConnectionId<'static> {
        let tag = hmac::sign(&self.ids, dcid);
        ConnectionId::from_vec(tag.as_ref()[..CONN_ID_LEN].to_vec())
    }

    /// The per-source counts (the endpoint reports handshakes completed
    /// and connections gone).
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// A new connection for a datagram of `len` bytes from `from` that
    /// matched none; or why not.
    pub fn accept(
        &self,
        header: &quiche::Header<'_>,
        len: usize,
        from: SocketAddr,
        load: Load,
    ) -> Result<Accepted, Refused> {
        match header.ty {
            quiche::Type::Short => return self.reset(header, len),
            // Never answered (RFC 9000 §6.2).
            quiche::Type::VersionNegotiation => return Err(Refused::Drop(Drop::UnknownConnection)),
            _ => {}
        }
        if len < MIN_INITIAL_DATAGRAM {
            // Too small to be a client's first datagram; answering it with
            // anything larger would amplify a spoofed source.
            return Err(Refused::Drop(
                if header.ty == quiche::Type::Initial
                    || !quiche::version_is_supported(header.version)
                {
                    Drop::TooSmall
                } else {
                    Drop::UnknownConnection
                },
            ));
        }
        let mut out = vec![0u8; MAX_DATAGRAM];
        if !quiche::version_is_supported(header.version) {
            let n = quiche::negotiate_version(&header.scid, &header.dcid, &mut out)
                .map_err(|_| Refused::Drop(Drop::Malformed))?;
            out.truncate(n);
            return Err(Refused::Reply(out, Reply::VersionNegotiation));
        }
        if header.ty != quiche::Type::Initial {
            return Err(Refused::Drop(Drop::UnknownConnection));
        }
        if load.draining {
            return Err(Refused::Drop(Drop::Draining));
        }
        if load.connections >= self.limits.max_connections {
            return Err(Refused::Drop(Drop::ConnectionLimit));
        }
        let source = Source::of(from);
        self.sources.check(source).map_err(Refused::Drop)?;

        // Address validation once the shard is busy or flooded: a Retry
        // costs the client one round trip, and spoofed sources get nothing
        // but a packet smaller than theirs.
        let busy = load.connections >= self.limits.retry_above;
        let flood = load.handshakes >= self.limits.retry_handshakes_above;
        let now = token::now_secs();
        let mut scid = self.conn_id_for(&header.dcid);
        let mut odcid = None;
        match header.token.as_deref().filter(|t| !t.is_empty()) {
            None if busy || flood => {
                let token = self.tokens.mint(&header.dcid, &scid, from, now);
                let n = quiche::retry(
                    &header.scid,
                    &header.dcid,
                    &scid,
                    &token,
                    header.version,
                    &mut out,
                )
                .map_err(|_| Refused::Drop(Drop::Malformed))?;
                out.truncate(n);
                return Err(Refused::Reply(out, Reply::Retry { flood: !busy }));
            }
            None => {}
            Some(token) => match self.tokens.validate(token, &header.dcid, from, now) {
                Some(id) => {
                    odcid = Some(id);
                    // After a Retry the client uses the ID we gave it
                    // there (the token is bound to it).
                    scid = header.dcid.clone().into_owned();
                }
                None if busy || flood => return Err(Refused::Drop(Drop::InvalidToken)),
                // Not one of ours (a NEW_TOKEN of another server, say):
                // as if there were none (RFC 9000 §8.1.3).
                None => {}
            },
        }
        let quic = {
            let mut config = self.quic_config.borrow_mut();
            // quiche 0.30 encodes the transport parameters into a fixed
            // buffer that a reset token does not fit beside the Retry's two
            // connection IDs (BufferTooShort): connections that passed a
            // Retry go without one (they idle out instead of being reset).
            let token = odcid.is_none().then(|| self.resets.token(&scid));
            config.set_stateless_reset_token(token);
            quiche::accept(&scid, odcid.as_ref(), self.local, from, &mut config).map_err(|e| {
                tracing::debug!(error = %e, "quiche refused an Initial");
                Refused::Drop(Drop::Rejected)
            })?
        };
        self.sources.opened(source);
        Ok(Accepted { scid, quic, source })
    }

    /// A stateless reset for a short-header packet to an unknown ID.
    fn reset(&self, header: &quiche::Header<'_>, len: usize) -> Result<Accepted, Refused> {
        match self.resets.reply(&header.dcid, len, token::now_secs()) {
            Some(packet) => Err(Refused::Reply(packet, Reply::StatelessReset)),
            None => Err(Refused::Drop(Drop::UnknownConnection)),
        }
    }
}
