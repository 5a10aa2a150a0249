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

/// A client certificate chain and its private key, both PEM files. One struct
/// rather than two optional paths: the keys are set together or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientIdentity {
    /// `client_certificate`: the chain, the client's own certificate first.
    pub certificate: std::path::PathBuf,
    /// `client_private_key`: the key of the chain's first certificate.
    pub private_key: std::path::PathBuf,
}

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

/// The validity period (`notBefore`, `notAfter`, Unix seconds) of the first
/// certificate of a PEM file: the leaf, the one a peer checks first.
pub fn leaf_validity(path: &Path) -> Result<(i64, i64), String> {
    let chain = load_certificates(path)?;
    validity(chain[0].as_ref())
        .ok_or_else(|| format!("{}: cannot read the certificate's validity", path.display()))
}

/// `tbsCertificate.validity` of an X.509 DER certificate (RFC 5280 4.1):
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter } ...
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (0x30, certificate, _) = der_element(der)? else {
        return None;
    };
    let (0x30, tbs, _) = der_element(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after; // the explicit version
    }
    for _ in 0..3 {
        // serialNumber, signature, issuer
        rest = der_element(rest)?.2;
    }
    let (0x30, validity, _) = der_element(rest)? else {
        return None;
    };
    let (tag, not_before, rest) = der_element(validity)?;
    let not_before = der_time(tag, not_before)?;
    let (tag, not_after, _) = der_element(rest)?;
    Some((not_before, der_time(tag, not_after)?))
}

/// One DER element: its tag, its content and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        rest = &rest[count..];
        length
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn der_time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let short = number(0..2)?;
            (if short >= 50 { 1900 + short } else { 2000 + short }, 2)
        }
        (0x18, 14) => (number(0..4)?, 4),
        _ => return None,
    };
    let field = |index: usize| number(rest + 2 * index..rest + 2 * index + 2);
    let (month, day, hour, minute, second) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times_read_as_unix_seconds() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(0x18, b"20261202143402Z"), Some(1_796_222_042));
        assert_eq!(der_time(0x17, b"20261202143000Z"), None);
        assert_eq!(der_time(0x17, b"261302143000Z"), None);
        assert_eq!(der_time(0x18, b"2026120214300Z"), None);
    }

    #[test]
    fn validity_of_a_real_certificate() {
        // `openssl req -x509 -days 1`: notBefore Dec  2 14:34:02 2026 GMT,
        // notAfter Dec  3 14:34:02 2026 GMT (`date -d ... +%s` below).
        let pem = concat!(
            "-----BEGIN CERTIFICATE-----\n",
            "MIIBfTCCASOgAwIBAgIUY9UUuVdIwETs7Ql6sUz+QSgQ3+owCgYIKoZIzj0EAwIw\n",
            "FDESMBAGA1UEAwwJbG9jYWxob3N0MB4XDTI2MTIwMjE0MzQwMloXDTI2MTIwMzE0\n",
            "MzQwMlowFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0D\n",
            "AQcDQgAElAvTh4MIqEnhuyDZYi22MfjsGrog2rX99rr5UDSKNRCJUGXR9j8kVnKJ\n",
            "JXW01DDTUxDNGfThqMVwZhiDxTpDd6NTMFEwHQYDVR0OBBYEFC2ESQYkyPa67hSo\n",
            "3uw3uEyyVN6VMB8GA1UdIwQYMBaAFC2ESQYkyPa67hSo3uw3uEyyVN6VMA8GA1Ud\n",
            "EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgUE5xi/xGa5NSSXMu4eVaJzyG\n",
            "zsdNWAf/zKR1wG2K6l8CIQDZSTy2rj7gFV9n7B6ZnK9CPeObD3awe+8xLaVbTSZU\n",
            "ww==\n",
            "-----END CERTIFICATE-----\n",
        );
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(validity(der.as_ref()), Some((1_796_222_042, 1_796_308_442)));
        assert_eq!(validity(&der.as_ref()[..40]), None, "truncated");
    }

    #[test]
    fn certificate_files_are_read_with_a_size_cap() {
        // A character device that never ends: refused before any read.
        let error = load_certificates(Path::new("/dev/zero")).unwrap_err();
        assert!(error.contains("not a regular file"), "{error}");
        let scratch = crate::test_support::TempDir::new("tls");
        let path = scratch.path().join("huge.pem");
        std::fs::write(&path, vec![b'A'; (PEM_FILE_BYTES_MAX + 1) as usize]).unwrap();
        let error = load_private_key(&path).unwrap_err();
        assert!(error.contains("larger than 1024 KiB"), "{error}");
        let error = load_certificates(Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert!(error.starts_with("cannot read /nonexistent/cert.pem"), "{error}");
    }
}
