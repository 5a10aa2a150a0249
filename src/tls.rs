//! TLS material: the server's certificate chain and key (PEM) into a rustls
//! configuration. Loading reads files, so it runs at start and on reload,
//! never per connection.

use std::sync::Arc;

/// Loads the certificate chain and private key (PEM) into a rustls server
/// configuration; errors name the file.
pub fn server_config(
    certificates: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificates)
        .map_err(|error| format!("{}: {error}", certificates.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{}: {error}", certificates.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate", certificates.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| format!("{}: {error}", key.display()))?;
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
