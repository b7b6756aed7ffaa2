//! Certificate authorities for Mesh mTLS backends: generating a builtin backend's CA
//! (rcgen) and checking a provided one (x509-parser, rustls), with Kuma's messages
//! (reference §2.6). CPU-heavy: callers run these off the async executor.

use crate::domain::{MeshName, ValidationError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A generated CA: PEM certificate and PEM (PKCS#8) private key.
pub struct GeneratedCa {
    /// `-----BEGIN CERTIFICATE-----…`
    pub cert_pem: String,
    /// `-----BEGIN PRIVATE KEY-----…`
    pub key_pem: String,
}

/// Generates the root CA of builtin backend `backend` of `mesh`: an ECDSA P-256 key and a
/// self-signed certificate valid for 10 years, with basic constraint CA, `keyCertSign`
/// and `cRLSign`, and the mesh's SPIFFE trust domain as its URI SAN, as Kuma's builtin CA
/// (which uses RSA 2048; ECDSA is what ring generates, and is smaller and faster).
///
/// # Errors
/// Key generation or signing failed (not expected).
pub fn generate_builtin_ca(mesh: &MeshName, backend: &str) -> Result<GeneratedCa, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Kuma");
    name.push(DnType::OrganizationalUnitName, "Mesh");
    name.push(DnType::CommonName, format!("{} {backend}", mesh.as_str()));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{}", mesh.as_str()).try_into()?,
    )];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(10 * 365);
    let cert = params.self_signed(&key)?;
    Ok(GeneratedCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Checks a provided CA as Kuma does: the PEM pair must be a valid TLS key pair (the key
/// matches the first certificate), and every certificate must be a CA with `keyCertSign`
/// and without `keyAgreement`. Violations are under `conf_path` (`mtls.backends[i].conf`).
///
/// # Errors
/// Every violation.
pub fn validate_provided_ca(
    cert: &[u8],
    key: &[u8],
    conf_path: &str,
) -> Result<(), ValidationError> {
    let mut errors = ValidationError::default();
    let cert_path = format!("{conf_path}.cert");
    let pair_error = |why: &str| format!("not a valid TLS key pair: {why}");

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        errors.push(
            &cert_path,
            pair_error("failed to find any PEM data in certificate input"),
        );
        return Err(errors);
    }
    let Ok(private_key) = PrivateKeyDer::from_pem_slice(key) else {
        errors.push(
            &cert_path,
            pair_error("failed to find any PEM data in key input"),
        );
        return Err(errors);
    };
    let mut parsed = Vec::new();
    for der in &chain {
        match X509Certificate::from_der(der.as_ref()) {
            Ok((_, certificate)) => parsed.push(certificate),
            Err(e) => {
                errors.push(
                    &cert_path,
                    pair_error(&format!("failed to parse certificate: {e}")),
                );
                return Err(errors);
            }
        }
    }
    match rustls::crypto::ring::sign::any_supported_type(&private_key) {
        Err(_) => errors.push(&cert_path, pair_error("unsupported or invalid private key")),
        Ok(signing_key) => {
            let matches = signing_key
                .public_key()
                .is_some_and(|spki| spki.as_ref() == parsed[0].tbs_certificate.subject_pki.raw);
            if !matches {
                errors.push(
                    &cert_path,
                    pair_error("private key does not match public key"),
                );
            }
        }
    }
    for (i, certificate) in parsed.iter().enumerate() {
        let at = format!("{cert_path}[{i}]");
        let is_ca = certificate
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            errors.push(
                &at,
                "basic constraint 'CA' must be set to 'true' (see X509-SVID: 4.1. Basic Constraints)",
            );
        }
        let usage = certificate.key_usage().ok().flatten().map(|ku| *ku.value);
        if !usage.is_some_and(|ku| ku.key_cert_sign()) {
            errors.push(
                &at,
                "key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)",
            );
        }
        if usage.is_some_and(|ku| ku.key_agreement()) {
            errors.push(
                &at,
                "key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)",
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Checks an ExternalService's TLS material, each fault on its field: `caCert` must hold
/// PEM certificates that parse, `clientCert` a PEM certificate that parses, `clientKey` a
/// PEM private key that matches `clientCert`'s first certificate. What is absent is not
/// checked.
///
/// # Errors
/// Every violation.
pub fn validate_external_service_tls(
    ca_cert: Option<&[u8]>,
    client_cert: Option<&[u8]>,
    client_key: Option<&[u8]>,
) -> Result<(), ValidationError> {
    let mut errors = ValidationError::default();
    if let Some(ca) = ca_cert
        && let Err(why) = parse_certificates(ca)
    {
        errors.push(
            "networking.tls.caCert",
            format!("not a valid PEM certificate bundle: {why}"),
        );
    }
    let leaf = match client_cert.map(parse_certificates) {
        Some(Err(why)) => {
            errors.push(
                "networking.tls.clientCert",
                format!("not a valid PEM certificate: {why}"),
            );
            None
        }
        Some(Ok(chain)) => chain.into_iter().next(),
        None => None,
    };
    if let Some(key) = client_key {
        const FIELD: &str = "networking.tls.clientKey";
        match PrivateKeyDer::from_pem_slice(key) {
            Err(_) => errors.push(
                FIELD,
                "not a valid PEM private key: failed to find any PEM data in key input",
            ),
            Ok(private_key) => match rustls::crypto::ring::sign::any_supported_type(&private_key) {
                Err(_) => errors.push(
                    FIELD,
                    "not a valid TLS key pair: unsupported or invalid private key",
                ),
                Ok(signing_key) => {
                    if let Some(leaf) = leaf {
                        let spki = X509Certificate::from_der(leaf.as_ref())
                            .map(|(_, c)| c.tbs_certificate.subject_pki.raw.to_vec())
                            .unwrap_or_default();
                        let matches = signing_key
                            .public_key()
                            .is_some_and(|key| key.as_ref() == spki.as_slice());
                        if !matches {
                            errors.push(
                                FIELD,
                                "not a valid TLS key pair: private key does not match the public key of clientCert",
                            );
                        }
                    }
                }
            },
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The PEM certificates of `pem`, each parsed as X.509.
fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err("failed to find any PEM data in certificate input".into());
    }
    for der in &chain {
        X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("failed to parse certificate: {e}"))?;
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_builtin_ca_passes_the_provided_ca_checks() {
        let ca = generate_builtin_ca(&MeshName::parse("default").unwrap(), "ca-1").unwrap();
        validate_provided_ca(ca.cert_pem.as_bytes(), ca.key_pem.as_bytes(), "conf").unwrap();
    }

    #[test]
    fn a_key_of_another_ca_does_not_match() {
        let mesh = MeshName::parse("default").unwrap();
        let a = generate_builtin_ca(&mesh, "a").unwrap();
        let b = generate_builtin_ca(&mesh, "b").unwrap();
        let err = validate_provided_ca(a.cert_pem.as_bytes(), b.key_pem.as_bytes(), "conf")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "conf.cert: not a valid TLS key pair: private key does not match public key"
            ),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_not_a_key_pair() {
        let err = validate_provided_ca(b"nope", b"nope", "conf")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failed to find any PEM data in certificate input"),
            "{err}"
        );
    }
}
