//! TLS material: the server's certificate chain and key (PEM) into a rustls
//! server configuration, and the webhook client's trust roots and optional
//! client certificate (mutual TLS) into a rustls client configuration.
//! Loading reads files, so it runs at start, on reload and on first use of a
//! webhook endpoint, never per connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};

use crate::config::ClientIdentity;

/// Loads the certificate chain and private key (PEM) into a rustls server
/// configuration; errors name the file.
pub fn server_config(certificates: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = load_certificates(certificates)?;
    let key = load_private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| format!("TLS: the certificate and key do not fit: {error}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Largest certificate, key or CA bundle file read. Real ones are a few KiB
/// (a bundle of every public root is about 250 KiB); a path replaced by a
/// huge or endless file (`/dev/zero`) must fail, not be read whole.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// The bytes of a regular PEM file of at most `PEM_FILE_BYTES_MAX` bytes.
fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let metadata = file
        .metadata()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mut bytes = Vec::new();
    // `take` bounds a file that grows while it is read, too.
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(format!(
            "{}: larger than {} KiB, not a certificate or key file",
            path.display(),
            PEM_FILE_BYTES_MAX / 1024
        ));
    }
    Ok(bytes)
}

/// Every certificate of a PEM file, in order; an empty file is an error.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem_file(path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(chain)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        // rustls says "no items found"; the usual cause is the wrong file.
        rustls::pki_types::pem::Error::NoItemsFound => format!("{}: no PEM private key", path.display()),
        error => format!("{}: {error}", path.display()),
    })
}

/// Which of a client identity's two files is at fault, so configuration
/// errors can name the right key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    Certificate(String),
    PrivateKey(String),
}

impl std::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityError::Certificate(why) | IdentityError::PrivateKey(why) => f.write_str(why),
        }
    }
}

/// Loads a client certificate chain and its private key (PEM), and checks
/// that the key belongs to the chain's first certificate: a mismatch would
/// otherwise only show as a handshake the server rejects, far from its cause.
pub fn client_identity(identity: &ClientIdentity) -> Result<Arc<CertifiedKey>, IdentityError> {
    let chain = load_certificates(&identity.certificate).map_err(IdentityError::Certificate)?;
    let key = load_private_key(&identity.private_key).map_err(IdentityError::PrivateKey)?;
    // `from_der` runs rustls's `keys_match`: the key's public half must be
    // the certificate's subject public key.
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map(Arc::new)
        .map_err(|error| {
            let why = match error {
                rustls::Error::InconsistentKeys(_) => {
                    format!(
                        "does not match the certificate in {}",
                        identity.certificate.display()
                    )
                }
                other => other.to_string(),
            };
            IdentityError::PrivateKey(format!("{}: {why}", identity.private_key.display()))
        })
}

/// The rustls client configuration of a webhook endpoint: the webpki roots,
/// plus the certificates of `ca_bundle`, plus a client certificate when the
/// endpoint requires mutual TLS. Errors name the file.
pub fn client_config(
    ca_bundle: Option<&Path>,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_bundle {
        let pem = read_pem_file(path).map_err(|error| format!("TLS: ca_bundle: {error}"))?;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate =
                certificate.map_err(|error| format!("TLS: invalid ca_bundle {}: {error}", path.display()))?;
            roots
                .add(certificate)
                .map_err(|error| format!("TLS: invalid certificate in {}: {error}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .with_root_certificates(roots);
    let config = match identity {
        // The same as `with_client_auth_cert`, on the key pair already checked.
        Some(identity) => {
            let certified =
                client_identity(identity).map_err(|error| format!("TLS: client certificate: {error}"))?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_files_are_read_with_a_size_cap() {
        // A character device that never ends: refused before any read.
        let error = load_certificates(Path::new("/dev/zero")).unwrap_err();
        assert!(error.contains("not a regular file"), "{error}");
        let path = std::env::temp_dir().join(format!("angos-huge-{}.pem", crate::storage::random_hex(8)));
        std::fs::write(&path, vec![b'A'; (PEM_FILE_BYTES_MAX + 1) as usize]).unwrap();
        let error = load_private_key(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(error.contains("larger than 1024 KiB"), "{error}");
        let error = load_certificates(Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert!(error.starts_with("cannot read /nonexistent/cert.pem"), "{error}");
    }
}
