//! rustls configurations from PEM files: root stores (system or a CA file), client
//! certificates, server certificates with optional client-certificate verification. Every
//! configuration uses the `ring` provider explicitly, so no process-wide default is needed.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Error, TlsStatus};

/// The crypto provider of every configuration made here: rustls' `ring` provider, which builds
/// with a C compiler alone and quickly (the `aws-lc-rs` default builds too, but compiles a large
/// C library; see the README's "TLS").
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(detail: String) -> Error {
    Error::Tls {
        socket: None,
        status: TlsStatus::Config,
        from_peer: false,
        detail,
    }
}

/// Every certificate in a PEM file, in file order.
///
/// # Errors
/// [`Error::Tls`] with [`TlsStatus::Config`] naming the file: unreadable, not PEM, or no
/// certificate in it.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let what = |e: &dyn std::fmt::Display| {
        config_error(format!(
            "cannot read certificates from {}: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| what(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| what(&e))?;
    if certs.is_empty() {
        return Err(what(&"no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
///
/// # Errors
/// [`Error::Tls`] with [`TlsStatus::Config`] naming the file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        config_error(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

/// A root store: the certificates of `ca_file`, or the system's roots when `None` (the
/// platform's store, as `rustls-native-certs` finds it: `SSL_CERT_FILE`/`SSL_CERT_DIR`, else
/// `/etc/ssl/certs` on Debian).
///
/// # Errors
/// [`Error::Tls`] with [`TlsStatus::Config`]: an unreadable CA file, or no usable root at all.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    let (certs, source) = match ca_file {
        Some(p) => (load_certs(p)?, p.display().to_string()),
        None => {
            let found = rustls_native_certs::load_native_certs();
            (found.certs, "the system's certificate store".to_owned())
        }
    };
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(config_error(format!(
            "no usable CA certificate in {source}"
        )));
    }
    Ok(roots)
}

/// A client configuration: servers verified against `ca_file` (or the system roots), and, with
/// `client_auth = Some((cert, key))`, this client's certificate chain and key (PEM) for servers
/// that ask for one.
///
/// # Errors
/// [`Error::Tls`] with [`TlsStatus::Config`]: a file that cannot be read, a key that does not
/// fit the certificate.
pub fn client_config(
    ca_file: Option<&Path>,
    client_auth: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, Error> {
    let roots = root_store(ca_file)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_root_certificates(roots);
    let config = match client_auth {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| {
                config_error(format!(
                    "client certificate {} with key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server configuration: this server's certificate chain and key (PEM), and with
/// `client_ca = Some(file)` client certificates required and verified against that CA.
///
/// # Errors
/// [`Error::Tls`] with [`TlsStatus::Config`].
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(root_store(Some(ca))?),
                provider(),
            )
            .build()
            .map_err(|e| config_error(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| {
            config_error(format!(
                "server certificate {} with key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    Ok(Arc::new(config))
}
