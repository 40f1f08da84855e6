//! TLS for the webapp's own outbound connections (identity providers): rustls with the ring provider
//! only, the machine's trusted roots plus an optional CA of the admin's.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The certificates of a PEM bundle; at least one.
pub fn roots_from_pem(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("invalid pem: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the pem");
    Ok(certs)
}

/// A client configuration trusting the machine's roots and the certificates of `ca_pem`.
pub fn client_config(ca_pem: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = ca_pem {
        for c in roots_from_pem(pem)? {
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("invalid ca certificate: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
