//! HTTPS with rustls (ring provider): certificate chain and private key from
//! PEM files, ALPN `h2` and `http/1.1`, served by the same accept loop, limits
//! and timeouts as cleartext. The configuration sits behind an `ArcSwap`, so
//! SIGHUP swaps in a new certificate for new connections while established
//! ones keep theirs.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The PEM files given with `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the certificate or key cannot be used (never shows key material).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no certificate.
    #[error("--tls-cert {path}: {problem}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The key file is unreadable or holds no private key.
    #[error("--tls-key {path}: {problem}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("--tls-cert/--tls-key: {0}")]
    Config(String),
}

/// Reads the files and builds a rustls server configuration.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |problem: String| TlsError::Cert {
        path: files.cert.display().to_string(),
        problem,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate in the file".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.display().to_string(),
        problem: format!("no usable PEM private key ({e})"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The live TLS configuration.
pub struct Tls {
    files: TlsFiles,
    config: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads the files once; an error names the flag and the file.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load(&files)?;
        Ok(Tls {
            files,
            config: ArcSwap::new(config),
        })
    }

    /// Re-reads the files; on error the current configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load(&self.files)?;
        self.config.store(config);
        Ok(())
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }
}
