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

/// Every certificate of a PEM file, in order; an empty file is an error.
fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("{}: {error}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(chain)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
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
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|error| format!("TLS: cannot read ca_bundle {}: {error}", path.display()))?;
        for certificate in certificates {
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
