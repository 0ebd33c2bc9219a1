//! TLS on both ports (WS_PORT and APP_PORT), from TLS_CERT_FILE (a PEM chain) and
//! TLS_KEY_FILE (its PEM key); both are read again on SIGHUP, so a renewed certificate is used
//! for every connection accepted after it, without a restart.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// None when TLS is not configured.
    pub fn load(settings: &TlsSettings) -> Result<Option<Arc<Self>>, String> {
        let (Some(cert), Some(key)) = (&settings.tls_cert_file, &settings.tls_key_file) else {
            return Ok(None);
        };
        let config = server_config(cert, key)?;
        Ok(Some(Arc::new(Self {
            cert: cert.clone(),
            key: key.clone(),
            config: RwLock::new(config),
        })))
    }

    /// Reads the files again; on error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.cert, &self.key)?;
        *self.config.write().expect("tls lock") = config;
        Ok(())
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().expect("tls lock").clone())
    }
}

/// rustls needs a process-wide crypto provider before any TLS (server, HTTP clients, Redis);
/// installing it again is harmless.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn server_config(cert: &PathBuf, key: &PathBuf) -> Result<Arc<ServerConfig>, String> {
    install_crypto();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|error| format!("TLS_CERT_FILE {}: {error}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("TLS_CERT_FILE {}: {error}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "TLS_CERT_FILE {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| format!("TLS_KEY_FILE {}: {error}", key.display()))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| format!("TLS_CERT_FILE / TLS_KEY_FILE: {error}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
