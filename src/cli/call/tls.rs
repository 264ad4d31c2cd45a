//! The client's TCP + TLS connection for `--transport h2`: a tokio
//! `TcpStream` wrapped by tokio-rustls (ring, TLS 1.3 and 1.2, ALPN `h2`),
//! verifying the server against `--ca` or, without it, accepting any
//! certificate (still checking the handshake signatures). Knows nothing of
//! HTTP/2 or gRPC.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const ALPN_H2: &[u8] = b"h2";

/// The client configuration: verify against `ca`, or accept any certificate.
fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut config = match ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("read {}", path.display()))?;
            for cert in certs {
                let cert = cert.with_context(|| format!("parse {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("no certificate in {}", path.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Connects to `peer` and completes the TLS handshake for `name` (SNI and
/// verification; an IP address sends no SNI). Fails unless the server
/// agreed to `h2`.
pub(super) async fn connect(
    peer: SocketAddr,
    name: Option<&str>,
    ca: Option<&Path>,
) -> Result<TlsStream<TcpStream>> {
    let config = client_config(ca)?;
    let tcp = TcpStream::connect(peer).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            anyhow!("nothing listening on TCP {peer} (connection refused)")
        }
        _ => anyhow!("connect to TCP {peer}: {e}"),
    })?;
    tcp.set_nodelay(true)?;
    let server_name = match name {
        Some(n) => ServerName::try_from(n.to_owned())
            .map_err(|_| anyhow!("{n:?} is not a valid TLS server name"))?,
        None => ServerName::from(peer.ip()),
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| {
            let hint = match e.to_string() {
                s if s.contains("certificate") => {
                    " (certificate not accepted: check --ca and --server-name)"
                }
                s if s.contains("NoApplicationProtocol") => {
                    " (no_application_protocol: the server does not speak h2)"
                }
                _ => "",
            };
            anyhow!("TLS handshake with {peer} failed: {e}{hint}")
        })?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        bail!("TLS with {peer}: the server did not agree to ALPN h2");
    }
    Ok(tls)
}

/// `--insecure` (or no `--ca`): any certificate for any name, but the
/// handshake's signatures are still verified with the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
