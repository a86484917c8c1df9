//! Active probes, as a health policy's plan asks: a TCP connect, or an HTTP/1.1 `GET` (over
//! TLS if asked, without verifying the certificate: a probe asks whether the backend answers,
//! not who it is) whose status line is all that is read.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use lb_policy::{Outcome, ProbeKind};

/// The most of a response read while looking for the status line.
const MAX_STATUS_LINE: usize = 1024;

/// Probes `address` as `kind` says, within `timeout`.
pub async fn probe(address: SocketAddr, kind: &ProbeKind, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, attempt(address, kind)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::TimedOut,
    }
}

async fn attempt(address: SocketAddr, kind: &ProbeKind) -> Outcome {
    let Ok(stream) = TcpStream::connect(address).await else {
        return Outcome::ConnectFailed;
    };
    let ProbeKind::Http { path, host, tls } = kind else {
        return Outcome::Connected;
    };
    let host = host.clone().unwrap_or_else(|| address.to_string());
    let request = request(path, &host);
    let status = if *tls {
        let name = ServerName::try_from(host_name(&host).to_owned())
            .unwrap_or_else(|_| ServerName::IpAddress(address.ip().into()));
        match tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, stream)
            .await
        {
            Ok(stream) => exchange(stream, &request).await,
            Err(_) => None,
        }
    } else {
        exchange(stream, &request).await
    };
    // Connected but no readable status line: the backend is not serving HTTP.
    status.map_or(Outcome::ConnectFailed, Outcome::Responded)
}

/// The probe's request: `GET path` to `host`, the connection closed after the answer.
pub fn request(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gantry-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
}

/// `host` without a port (and an IPv6 literal without brackets), for SNI.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Sends `request` and reads the status code of the response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> Option<u16> {
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_STATUS_LINE {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    status_code(&head)
}

/// The status of an `HTTP/1.x NNN ...` status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\r').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    let code: u16 = std::str::from_utf8(code).ok()?.parse().ok()?;
    let delimited = rest.get(1) == Some(&b' ') && matches!(rest.get(5), None | Some(b' '));
    (delimited && (100..=599).contains(&code)).then_some(code)
}

/// One client configuration for every TLS probe.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                        .with_no_client_auth()
                });
            match config {
                Ok(config) => Arc::new(config),
                // The ring provider supports the default versions; kept total regardless.
                Err(_) => Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                ),
            }
        })
        .clone()
}

/// Accepts any certificate but still checks the handshake signatures, so the exchange is a
/// real TLS session with whoever answers.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_strictly() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000\r\n"), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(host_name("[::1]:8443"), "::1");
        assert_eq!(host_name("api.example:8443"), "api.example");
    }
}
