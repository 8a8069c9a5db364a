//! A throw-away certificate authority for a test control plane or a lab: serving
//! certificates for the API server, client certificates for admins and components, and
//! the service-account signing key.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Result;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertPem {
    pub cert: String,
    pub key: String,
}

/// The CA: it signs every certificate of one cluster.
pub struct Pki {
    ca_cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    pub fn new(name: &str) -> Result<Pki> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = dn(name, &[]);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Pki {
            ca_cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// A serving certificate for the given DNS names and IPs.
    pub fn server(&self, cn: &str, sans: &[String]) -> Result<CertPem> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name = dn(cn, &[]);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A client certificate: Kubernetes reads the user from CN and groups from O.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<CertPem> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(user, groups);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A fresh key for signing service-account tokens (ECDSA P-256): the private key as
/// PKCS#8 PEM and the public key as PEM (the API server reads them from separate files).
pub fn service_account_key() -> Result<CertPem> {
    let key = KeyPair::generate()?;
    Ok(CertPem {
        cert: key.public_key_pem(),
        key: key.serialize_pem(),
    })
}

fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_certificates_and_keys() {
        let pki = Pki::new("test-ca").unwrap();
        assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let s = pki
            .server("apiserver", &["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        assert!(s.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(s.key.contains("PRIVATE KEY"));
        let c = pki.client("admin", &["system:masters"]).unwrap();
        assert_ne!(c.cert, s.cert);
        let sa = service_account_key().unwrap();
        assert!(sa.key.contains("PRIVATE KEY") && sa.cert.contains("PUBLIC KEY"));
    }
}
