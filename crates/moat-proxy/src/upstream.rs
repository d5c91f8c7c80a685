//! Dialling upstream servers: resolution with overrides, the destination guard, TCP and
//! verified TLS with ALPN, behind hyper-util's pooled client.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::Connected;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::guard::Guard;
use crate::guard::IpRange;

/// How the proxy reaches upstream servers. Process-wide: shared by every run of a proxy.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Extra trusted roots (corporate TLS inspection, private CAs, test upstreams).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Whether the Mozilla root set (webpki-roots) is trusted. The caller can instead load the
    /// system store itself and pass it in `extra_roots`.
    pub webpki_roots: bool,
    /// `(host, port) → address` overrides, like curl `--resolve`. Hosts are compared
    /// case-insensitively. Overridden addresses bypass the destination guard.
    pub resolve: HashMap<(String, u16), SocketAddr>,
    /// Address ranges the destination guard lets through even though they are internal.
    pub allowed_destinations: Vec<IpRange>,
    /// Additional addresses of this host to refuse (the proxy adds its interfaces' addresses).
    pub own_addresses: Vec<IpAddr>,
    /// Time allowed for resolution plus the TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed for the upstream TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time allowed between sending a request and receiving the response head.
    pub response_timeout: Duration,
    /// How long idle pooled connections are kept.
    pub pool_idle_timeout: Duration,
    /// How many idle connections are kept per upstream.
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            extra_roots: Vec::new(),
            webpki_roots: true,
            resolve: HashMap::new(),
            allowed_destinations: Vec::new(),
            own_addresses: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 1024,
        }
    }
}

impl UpstreamSettings {
    /// Adds a resolve override for `host:port` (`host` may be a bracketed IPv6 literal).
    pub fn resolve(mut self, host: &str, port: u16, addr: SocketAddr) -> Self {
        self.resolve.insert(override_key(host, port), addr);
        self
    }

    /// The override for `host:port`, if one was given.
    pub fn resolved(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.resolve.get(&override_key(host, port)).copied()
    }

    /// Adds every certificate of a PEM bundle (such as `MOAT_UPSTREAM_CA`) to the extra roots.
    pub fn add_pem_roots(&mut self, pem: &str) -> Result<usize, SettingsError> {
        use rustls::pki_types::pem::PemObject;
        let mut added = 0;
        for (index, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            let cert = cert.map_err(|e| SettingsError::Pem {
                index,
                problem: e.to_string(),
            })?;
            self.extra_roots.push(cert);
            added += 1;
        }
        if added == 0 {
            return Err(SettingsError::NoCertificates);
        }
        Ok(added)
    }

    /// Adds overrides written like `MOAT_RESOLVE`: comma-separated `host:port=ip:port` items
    /// (IPv6 addresses in brackets).
    pub fn add_resolve_overrides(&mut self, spec: &str) -> Result<(), SettingsError> {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || SettingsError::Resolve {
                item: item.to_owned(),
            };
            let (from, to) = item.split_once('=').ok_or_else(bad)?;
            let (host, port) = from.trim().rsplit_once(':').ok_or_else(bad)?;
            let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(bad());
            }
            let addr: SocketAddr = to.trim().parse().map_err(|_| bad())?;
            self.resolve.insert(override_key(host, port), addr);
        }
        Ok(())
    }
}

/// Why upstream settings given as text could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A PEM block could not be read.
    #[error(
        "certificate {index} of the upstream ca bundle is not valid pem ({problem}); check the file"
    )]
    Pem {
        /// Zero-based position of the block.
        index: usize,
        /// What the parser said.
        problem: String,
    },
    /// The bundle holds no certificate.
    #[error(
        "the upstream ca bundle contains no certificate; it must hold `-----BEGIN CERTIFICATE-----` blocks"
    )]
    NoCertificates,
    /// A resolve override is malformed.
    #[error(
        "invalid resolve override `{item}`; write `host:port=ip:port`, e.g. `api.github.com:443=127.0.0.1:8443`"
    )]
    Resolve {
        /// The offending item.
        item: String,
    },
}

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The request URI had no usable host.
    #[error("the request has no upstream host; send absolute-form or CONNECT requests")]
    NoHost,
    /// Name resolution failed.
    #[error("cannot resolve `{host}`: {source}; check the name or add a resolve override")]
    Dns {
        /// The host.
        host: String,
        /// The resolver error.
        #[source]
        source: io::Error,
    },
    /// Every resolved address is internal and not allowed.
    #[error("`{host}` resolves to {addr}, an internal address the proxy refuses")]
    Blocked {
        /// The host.
        host: String,
        /// The first refused address.
        addr: IpAddr,
    },
    /// The TCP connection failed.
    #[error("cannot connect to `{host}` at {addr}: {source}")]
    Connect {
        /// The host.
        host: String,
        /// The address dialled last.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Resolution and connection took longer than the connect timeout.
    #[error("connecting to `{host}` timed out; the server may be down or unreachable")]
    ConnectTimeout {
        /// The host.
        host: String,
    },
    /// The TLS handshake failed (certificate not trusted, name mismatch, protocol error).
    #[error(
        "tls handshake with `{host}` failed: {source}; if the server uses a private ca, add it to the upstream roots"
    )]
    Tls {
        /// The host.
        host: String,
        /// The TLS error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake took too long.
    #[error("tls handshake with `{host}` timed out")]
    TlsTimeout {
        /// The host.
        host: String,
    },
}

impl UpstreamError {
    /// The short reason used in `X-Moat-Error` / `X-Moat-Blocked` and records.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoHost => "bad-request",
            Self::Dns { .. } => "dns-failure",
            Self::Blocked { .. } => "destination-not-allowed",
            Self::Connect { .. } => "connect-failed",
            Self::ConnectTimeout { .. } | Self::TlsTimeout { .. } => "upstream-timeout",
            Self::Tls { .. } => "upstream-tls",
        }
    }
}

/// How overrides are keyed: lower case, IPv6 literals without brackets (URIs carry them with
/// brackets, `MOAT_RESOLVE` may or may not).
fn override_key(host: &str, port: u16) -> (String, u16) {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (host.to_ascii_lowercase(), port)
}

/// A hyper-util connector that resolves, guards, dials and (for `https`) verifies TLS.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<ConnectorInner>,
    tls: TlsConnector,
}

struct ConnectorInner {
    resolve: HashMap<(String, u16), SocketAddr>,
    guard: Guard,
    connect_timeout: Duration,
    tls_timeout: Duration,
}

impl Connector {
    /// Builds a connector offering `alpn` to TLS upstreams.
    pub(crate) fn new(
        settings: &UpstreamSettings,
        guard: Guard,
        alpn: &[&[u8]],
    ) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore::empty();
        if settings.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for cert in &settings.extra_roots {
            roots.add(cert.clone())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            inner: Arc::new(ConnectorInner {
                resolve: settings
                    .resolve
                    .iter()
                    .map(|((h, p), a)| (override_key(h, *p), *a))
                    .collect(),
                guard,
                connect_timeout: settings.connect_timeout,
                tls_timeout: settings.tls_handshake_timeout,
            }),
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn connect(self, uri: Uri) -> Result<UpstreamIo, UpstreamError> {
        let host = uri.host().ok_or(UpstreamError::NoHost)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_ascii_lowercase();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::time::timeout(self.inner.connect_timeout, self.dial(&host, port))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout { host: host.clone() })??;
        // Small requests and responses should not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(UpstreamIo {
                io: TokioIo::new(Stream::Plain(tcp)),
                h2: false,
            });
        }
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.clone()).map_err(|e| UpstreamError::Tls {
                host: host.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            })?,
        };
        let tls = tokio::time::timeout(self.inner.tls_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| UpstreamError::TlsTimeout { host: host.clone() })?
            .map_err(|source| UpstreamError::Tls {
                host: host.clone(),
                source,
            })?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(UpstreamIo {
            io: TokioIo::new(Stream::Tls(Box::new(tls))),
            h2,
        })
    }

    async fn dial(&self, host: &str, port: u16) -> Result<TcpStream, UpstreamError> {
        if let Some(addr) = self.inner.resolve.get(&override_key(host, port)) {
            return TcpStream::connect(addr)
                .await
                .map_err(|source| UpstreamError::Connect {
                    host: host.to_owned(),
                    addr: *addr,
                    source,
                });
        }
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| UpstreamError::Dns {
                    host: host.to_owned(),
                    source,
                })?
                .collect(),
        };
        let mut refused = None;
        let mut last_err = None;
        for addr in addrs {
            if !self.inner.guard.permits(addr.ip()) {
                refused.get_or_insert(addr.ip());
                continue;
            }
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last_err = Some((addr, e)),
            }
        }
        match (last_err, refused) {
            (Some((addr, source)), _) => Err(UpstreamError::Connect {
                host: host.to_owned(),
                addr,
                source,
            }),
            (None, Some(addr)) => Err(UpstreamError::Blocked {
                host: host.to_owned(),
                addr,
            }),
            (None, None) => Err(UpstreamError::Dns {
                host: host.to_owned(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            }),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A dialled upstream connection, plain or TLS, as hyper sees it.
pub(crate) struct UpstreamIo {
    io: TokioIo<Stream>,
    h2: bool,
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Finds an [`UpstreamError`] in an error's source chain.
pub(crate) fn find_upstream_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a UpstreamError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(u) = e.downcast_ref::<UpstreamError>() {
            return Some(u);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_overrides_parse_like_curl() {
        let mut s = UpstreamSettings::default();
        s.add_resolve_overrides("API.github.com:443=127.0.0.1:8443, [::1]:80=[::1]:8080,")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.resolve.get(&("api.github.com".to_owned(), 443)),
            Some(&"127.0.0.1:8443".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        assert!(s.resolve.contains_key(&("::1".to_owned(), 80)));
        for bad in [
            "nohost=1.2.3.4:1",
            "a:0=1.2.3.4:1",
            "a:1=notanip",
            "a:1",
            ":1=1.2.3.4:5",
        ] {
            assert!(
                UpstreamSettings::default()
                    .add_resolve_overrides(bad)
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn overrides_match_ipv6_literals_with_or_without_brackets() {
        let to: SocketAddr = "[::1]:8443".parse().unwrap_or_else(|e| panic!("{e}"));
        // As the CLI passes them (MOAT_RESOLVE keeps the brackets) ...
        let s = UpstreamSettings::default().resolve("[FD00::5]", 443, to);
        // ... and as a connection looks them up (from the URI, brackets stripped or not).
        assert_eq!(s.resolved("fd00::5", 443), Some(to));
        assert_eq!(s.resolved("[fd00::5]", 443), Some(to));
        assert_eq!(s.resolved("fd00::5", 80), None);
    }

    #[test]
    fn pem_roots() {
        let ca = crate::CertificateAuthority::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut s = UpstreamSettings::default();
        let bundle = format!("{}{}", ca.cert_pem(), ca.cert_pem());
        assert_eq!(s.add_pem_roots(&bundle), Ok(2));
        assert_eq!(s.extra_roots.len(), 2);
        assert_eq!(
            s.add_pem_roots("nothing here"),
            Err(SettingsError::NoCertificates)
        );
        assert!(Connector::new(&s, Guard::default(), &[b"h2"]).is_ok());
    }
}
