//! The TLS side of HTTP/2 over TCP: one rustls server configuration (ring
//! provider, TLS 1.3 and 1.2, ALPN `h2` only) built from the same
//! certificate and key files as QUIC, shared by every connection of a shard.

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::shard::tls::TlsFiles;

/// The ALPN protocol both ends must agree on: a client that offers only
/// `http/1.1` fails the handshake (no_application_protocol).
pub const ALPN_H2: &[u8] = b"h2";

/// The server configuration for `files`; errors name the file.
pub fn server_config(files: &TlsFiles) -> io::Result<Arc<rustls::ServerConfig>> {
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} {}: {e}", path.display()),
        )
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("TLS certificate", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("TLS certificate", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(bad("TLS certificate", &files.cert, &"no certificate in it"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad("TLS key", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("TLS certificate and key", &files.cert, &e))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No session tickets or resumption state held per client beyond the
    // default in-memory cache (bounded by rustls: 256 entries).
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_from_the_self_signed_pair_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = crate::shard::tls::self_signed(dir.path()).unwrap();
        let config = server_config(&files).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let broken = TlsFiles {
            cert: junk.clone(),
            key: files.key.clone(),
        };
        let e = server_config(&broken).unwrap_err().to_string();
        assert!(e.contains("junk.pem"), "{e}");
        let broken = TlsFiles {
            cert: files.cert.clone(),
            key: junk,
        };
        assert!(server_config(&broken).is_err());
    }
}
