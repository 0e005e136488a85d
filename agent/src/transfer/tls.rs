//! Mutual TLS between agents: every node certificate is signed by the fleet CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::TransferError;

/// Both sides of the data plane's TLS for one node: TLS 1.3 only, ring as the
/// crypto provider (given to each config, so no process default is needed).
#[derive(Clone)]
pub struct FleetTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl FleetTls {
    /// The fleet CA certificate, this node's certificate (chain, leaf first)
    /// and its private key, as PEM files.
    pub fn from_pem_files(ca: &Path, cert: &Path, key: &Path) -> Result<FleetTls, TransferError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TransferError::ReadPem {
                path: path.to_owned(),
                source,
            })
        };
        FleetTls::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<FleetTls, TransferError> {
        let ca = certificates(ca, "CA")?;
        let chain = certificates(cert, "node certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| TransferError::Pem {
            what: "node key",
            source,
        })?;

        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert)?;
        }
        let roots = Arc::new(roots);
        let mut provider = rustls::crypto::ring::default_provider();
        // AES-128-GCM first: a third fewer AES rounds than AES-256.
        provider
            .cipher_suites
            .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let provider = Arc::new(provider);

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(FleetTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    pub(super) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    pub(super) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client.clone())
    }
}

impl std::fmt::Debug for FleetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetTls(..)")
    }
}

fn certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TransferError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TransferError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TransferError::NoCertificate(what));
    }
    Ok(certs)
}
