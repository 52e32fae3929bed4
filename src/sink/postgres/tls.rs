//! TLS for the warehouse connection, with `sslmode` as libpq reads it, over rustls (the TLS
//! stack reqwest and the EMSC WebSocket use too).
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | – |
//! | `prefer` (the default) | when the server offers it | no |
//! | `require` | yes, or no connection | no |
//! | `verify-ca` | yes | signed by a trusted root |
//! | `verify-full` | yes | signed by a trusted root, and for the host connected to |
//!
//! The trusted roots are the machine's, or the PEM file named by `sslrootcert`.

use std::{path::PathBuf, sync::Arc};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio_postgres::config::SslMode as PgSslMode;

/// How the connection is secured (`sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS settings of a connection URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted roots instead of the machine's.
    pub root_cert: Option<PathBuf>,
}

/// Takes the TLS settings out of a `postgres://` URL: the URL tokio-postgres is given (it reads
/// neither `verify-*` nor `sslrootcert`), and the settings. A key-value connection string
/// (`host=… sslmode=…`) is given as it is, with its `sslmode` read by tokio-postgres.
pub fn split(text: &str) -> Result<(String, Tls), String> {
    let default = Tls {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Ok((text.to_string(), default));
    }
    let Ok(mut url) = url::Url::parse(text) else {
        // tokio-postgres says what is wrong with it.
        return Ok((text.to_string(), default));
    };
    let mut tls = default;
    let mut kept = Vec::new();
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "sslmode" => {
                tls.mode = match value.as_ref() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other:?}: expected disable, prefer, require, verify-ca or verify-full"
                        ));
                    }
                }
            }
            "sslrootcert" => tls.root_cert = Some(PathBuf::from(value.as_ref())),
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((url.to_string(), tls))
}

impl Tls {
    /// The mode tokio-postgres negotiates with: whether TLS is tried, and whether it is a must.
    pub fn pg_mode(&self) -> PgSslMode {
        match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }

    /// The rustls client configuration for this mode.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match self.mode {
            SslMode::VerifyFull => builder
                .with_root_certificates(self.roots()?)
                .with_no_client_auth(),
            mode => {
                let chain = match mode {
                    SslMode::VerifyCa => Some(
                        rustls::client::WebPkiServerVerifier::builder_with_provider(
                            Arc::new(self.roots()?),
                            provider.clone(),
                        )
                        .build()
                        .map_err(|e| e.to_string())?,
                    ),
                    _ => None,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Verifier { provider, chain }))
                    .with_no_client_auth()
            }
        };
        Ok(config)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "sslrootcert {}: no certificate in it",
                        path.display()
                    ));
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err("no trusted root certificates on this machine (install \
                                ca-certificates, or name a file with sslrootcert)"
                        .into());
                }
            }
        }
        Ok(roots)
    }
}

/// The server certificate check of `prefer` and `require` (none: libpq's meaning) and of
/// `verify-ca` (the chain against the roots, whatever host name it is for). The handshake's
/// signatures are verified in every mode, so the session key belongs to the certificate.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    /// `verify-ca`'s chain check; `None`: no check.
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_come_out_of_the_url() {
        let (url, tls) = split(
            "postgres://etl@db.example.org:5432/quakes?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://etl@db.example.org:5432/quakes?application_name=x"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(tls.pg_mode(), PgSslMode::Require);

        let (url, tls) = split("postgres://etl@db/quakes?sslmode=require").unwrap();
        assert_eq!(url, "postgres://etl@db/quakes");
        assert_eq!(
            (tls.mode, tls.pg_mode()),
            (SslMode::Require, PgSslMode::Require)
        );

        let (_, tls) = split("postgres://etl@db/quakes").unwrap();
        assert_eq!(
            (tls.mode, tls.pg_mode()),
            (SslMode::Prefer, PgSslMode::Prefer)
        );
        let (_, tls) = split("postgresql://etl@db/quakes?sslmode=disable").unwrap();
        assert_eq!(tls.pg_mode(), PgSslMode::Disable);

        let err = split("postgres://etl@db/quakes?sslmode=verify").unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
        let (dsn, _) = split("host=db user=etl sslmode=require").unwrap();
        assert_eq!(dsn, "host=db user=etl sslmode=require");
    }

    #[test]
    fn a_missing_root_file_is_named() {
        let tls = Tls {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let err = tls.client_config().unwrap_err();
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
        for mode in [SslMode::Prefer, SslMode::Require] {
            let tls = Tls {
                mode,
                root_cert: None,
            };
            assert!(tls.client_config().is_ok());
        }
    }
}
