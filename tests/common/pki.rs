//! Certificates for mTLS tests.

/// A CA certificate and key (PEM), as an operator's own CA would be.
pub fn ca_pair(name: &str) -> (String, String) {
    ca_pair_valid_for(name, None)
}

/// A CA certificate and key (PEM) that expires in `days` days from now (rcgen's default
/// validity if `None`).
pub fn ca_pair_valid_for(name: &str, days: Option<i64>) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    if let Some(days) = days {
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    }
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}
