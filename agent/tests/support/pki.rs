//! A throwaway fleet CA and node certificates, as the real fleet would issue
//! them: the CA signs every node certificate, which names its node and is good
//! for both TLS server and client authentication.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use zdr_agent::transfer::FleetTls;

pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A node's certificate and key, PEM.
pub struct NodePem {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { issuer }
    }

    pub fn node_pem(&self, node: &str) -> NodePem {
        let mut params = CertificateParams::new(vec![node.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, node);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        NodePem {
            ca: self.issuer.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn tls(&self, node: &str) -> FleetTls {
        let pem = self.node_pem(node);
        FleetTls::from_pem(pem.ca.as_bytes(), pem.cert.as_bytes(), pem.key.as_bytes()).unwrap()
    }
}
