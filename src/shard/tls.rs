//! TLS material for QUIC: the operator's certificate and key, or a
//! self-signed pair generated once and kept in the state directory so a
//! fresh node serves HTTP/3 out of the box.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The self-signed pair in `dir`, generated on first use. Returns the files
/// and the certificate's SHA-256 fingerprint.
pub fn self_signed(dir: &Path) -> io::Result<(TlsFiles, String)> {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if !files.cert.exists() || !files.key.exists() {
        std::fs::create_dir_all(dir)?;
        let mut names = vec!["localhost".to_owned()];
        if let Ok(host) = nix::unistd::gethostname() {
            if let Some(host) = host.to_str().filter(|h| !h.is_empty() && *h != "localhost") {
                names.push(host.to_owned());
            }
        }
        let certified = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
        let key_tmp = files.key.with_extension("tmp");
        std::fs::write(&key_tmp, certified.signing_key.serialize_pem())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&key_tmp, &files.key)?;
        let cert_tmp = files.cert.with_extension("tmp");
        std::fs::write(&cert_tmp, certified.cert.pem())?;
        std::fs::rename(&cert_tmp, &files.cert)?;
    }
    let fingerprint = fingerprint(&files.cert)?;
    Ok((files, fingerprint))
}

/// SHA-256 of the first certificate's DER, as colon-separated hex.
pub fn fingerprint(cert_pem: &Path) -> io::Result<String> {
    let pem = std::fs::read_to_string(cert_pem)?;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64_decode(&body)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "certificate is not PEM"))?;
    let digest = Sha256::digest(&der);
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s
        .as_bytes()
        .iter()
        .filter(|c| !c.is_ascii_whitespace() && **c != b'=')
    {
        acc = (acc << 6) | value(c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_keeps_the_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (files, first) = self_signed(dir.path()).unwrap();
        assert!(std::fs::read_to_string(&files.cert)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        let (_, again) = self_signed(dir.path()).unwrap();
        assert_eq!(first, again);
        assert_eq!(first.len(), 32 * 3 - 1);
    }
}
