//! Admission of new QUIC connections: version negotiation, the connection
//! limit, address validation with Retry once the shard is busy (tokens in
//! token.rs), and our connection IDs (an HMAC of the client's first
//! destination ID, so a client's retransmitted Initials find the same
//! connection).
//!
//! Decides and builds the `quiche::Connection`; the endpoint owns the
//! connection map and the tasks. No sockets here: a refusal that needs an
//! answer returns the packet to send.

use std::cell::RefCell;
use std::net::SocketAddr;

use quiche::ConnectionId;
use ring::hmac;

use super::token::{self, RetryTokens};
use crate::pool::metrics::Drop;

/// Our connection IDs' length.
pub const CONN_ID_LEN: usize = quiche::MAX_CONN_ID_LEN;
const MAX_DATAGRAM: usize = super::MAX_DATAGRAM;

/// Why an Initial got no connection.
pub enum Refused {
    /// A stateless answer.
    Reply(Vec<u8>, Reply),
    Drop(Drop),
}

/// Which stateless answer.
pub enum Reply {
    VersionNegotiation,
    Retry,
}

pub struct Acceptor {
    quic_config: RefCell<quiche::Config>,
    /// Derives our connection IDs.
    ids: hmac::Key,
    tokens: RetryTokens,
    local: SocketAddr,
    max_connections: usize,
    retry_above: usize,
}

impl Acceptor {
    pub fn new(
        quic_config: quiche::Config,
        local: SocketAddr,
        max_connections: usize,
        retry_above: usize,
    ) -> std::io::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let ids = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| std::io::Error::other("random key"))?;
        Ok(Self {
            quic_config: RefCell::new(quic_config),
            ids,
            tokens: RetryTokens::new()?,
            local,
            max_connections,
            retry_above,
        })
    }

    /// Our connection ID for a client's first destination ID.
    pub fn conn_id_for(&self, dcid: &[u8]) -> ConnectionId<'static> {
        let tag = hmac::sign(&self.ids, dcid);
        ConnectionId::from_vec(tag.as_ref()[..CONN_ID_LEN].to_vec())
    }

    /// A new connection for an Initial from `from` (the shard holds
    /// `count` connections), with the ID to file it under; or why not.
    pub fn accept(
        &self,
        header: &quiche::Header<'_>,
        from: SocketAddr,
        count: usize,
        draining: bool,
    ) -> Result<(ConnectionId<'static>, quiche::Connection), Refused> {
        if header.ty != quiche::Type::Initial {
            return Err(Refused::Drop(Drop::UnknownConnection));
        }
        if draining {
            return Err(Refused::Drop(Drop::Draining));
        }
        let mut out = vec![0u8; MAX_DATAGRAM];
        if !quiche::version_is_supported(header.version) {
            let len = quiche::negotiate_version(&header.scid, &header.dcid, &mut out)
                .map_err(|_| Refused::Drop(Drop::Malformed))?;
            out.truncate(len);
            return Err(Refused::Reply(out, Reply::VersionNegotiation));
        }
        if count >= self.max_connections {
            return Err(Refused::Drop(Drop::ConnectionLimit));
        }
        let mut scid = self.conn_id_for(&header.dcid);
        // Address validation once the shard is busy: a Retry costs the
        // client one round trip and spoofed sources get nothing.
        let mut odcid = None;
        if count >= self.retry_above {
            match header.token.as_deref().filter(|t| !t.is_empty()) {
                None => {
                    let token = self.tokens.mint(&header.dcid, from, token::now_secs());
                    let len = quiche::retry(
                        &header.scid,
                        &header.dcid,
                        &scid,
                        &token,
                        header.version,
                        &mut out,
                    )
                    .map_err(|_| Refused::Drop(Drop::Malformed))?;
                    out.truncate(len);
                    return Err(Refused::Reply(out, Reply::Retry));
                }
                Some(token) => match self.tokens.validate(token, from, token::now_secs()) {
                    Some(id) => {
                        odcid = Some(id);
                        // After a Retry the client already uses the ID we
                        // gave it there.
                        scid = header.dcid.clone().into_owned();
                    }
                    None => return Err(Refused::Drop(Drop::InvalidToken)),
                },
            }
        }
        let quic = {
            let mut config = self.quic_config.borrow_mut();
            quiche::accept(&scid, odcid.as_ref(), self.local, from, &mut config)
                .map_err(|_| Refused::Drop(Drop::Rejected))?
        };
        Ok((scid, quic))
    }
}
