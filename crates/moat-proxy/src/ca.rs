//! The per-run certificate authority and its bounded cache of leaf certificates.
//!
//! The CA is an ECDSA P-256 key generated in memory; its private key is never serialised
//! anywhere but the process heap. Leaves share one P-256 key per CA (minting then costs a single
//! signature) and are cached per host as ready-to-use rustls server configurations.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::SanType;
use rcgen::SerialNumber;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::DnsName;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::server::ClientHello;
use rustls::server::ResolvesServerCert;
use rustls::server::ServerSessionMemoryCache;
use rustls::sign::CertifiedKey;
use tokio::sync::OnceCell;

/// Default number of hosts whose leaf certificates are kept.
pub const DEFAULT_LEAF_CACHE_CAPACITY: usize = 1024;

/// How far in the past leaf and CA certificates start being valid, to absorb clock skew
/// between the host and the container.
const BACKDATE: time::Duration = time::Duration::days(1);
const CA_LIFETIME: time::Duration = time::Duration::days(90);
const LEAF_LIFETIME: time::Duration = time::Duration::days(30);

/// Why the CA could not be created or could not mint a leaf.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Key generation or certificate signing failed.
    #[error(
        "cannot generate a certificate: {source}; this is a bug in moat-proxy, please report it"
    )]
    Generate {
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused the generated key or configuration.
    #[error(
        "cannot build a tls configuration: {source}; this is a bug in moat-proxy, please report it"
    )]
    Tls {
        /// The underlying error.
        #[source]
        source: rustls::Error,
    },
    /// The host is neither a valid DNS name nor an IP address.
    #[error("`{host}` is not a valid host name or ip address; use a name such as `api.github.com`")]
    InvalidHost {
        /// The host as given.
        host: String,
    },
}

/// A per-run ECDSA P-256 certificate authority that mints leaf certificates on demand.
///
/// The private key lives only in memory; [`CertificateAuthority::cert_pem`] exposes only the
/// public certificate. Leaves are cached in a bounded cache with single-flight minting: many
/// concurrent handshakes for a new host mint exactly one certificate.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_signing_key: Arc<dyn rustls::sign::SigningKey>,
    provider: Arc<CryptoProvider>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
    cache: Mutex<LeafCache>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cached_leaves", &self.cached_leaves())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new CA with the default leaf cache capacity.
    pub fn generate() -> Result<Self, CaError> {
        Self::with_cache_capacity(DEFAULT_LEAF_CACHE_CAPACITY)
    }

    /// Generates a new CA whose leaf cache keeps at most `capacity` hosts (at least 1).
    pub fn with_cache_capacity(capacity: usize) -> Result<Self, CaError> {
        let gen_err = |source| CaError::Generate { source };
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "moat");
        dn.push(
            DnType::CommonName,
            format!("moat run CA {:016x}", rand::random::<u64>()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&ca_key).map_err(gen_err)?;
        let cert_der = cert.der().clone();
        let cert_pem = cert.pem();
        let issuer = Issuer::new(params, ca_key);

        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signing_key = provider
            .key_provider
            .load_private_key(leaf_der)
            .map_err(|source| CaError::Tls { source })?;
        Ok(Self {
            cert_der,
            cert_pem,
            issuer,
            leaf_key,
            leaf_signing_key,
            provider,
            sessions: ServerSessionMemoryCache::new(4096),
            cache: Mutex::new(LeafCache::new(capacity.max(1))),
        })
    }

    /// The CA certificate in PEM form, for the container's trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER form.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Mints a fresh leaf certificate for `host` (a DNS name or an IP address), bypassing the
    /// cache. Returns the DER-encoded certificate.
    pub fn mint_leaf(&self, host: &str) -> Result<CertificateDer<'static>, CaError> {
        let gen_err = |source| CaError::Generate { source };
        let san = host_san(host)?;
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // X.509 bounds the common name to 64 characters; the SAN is what clients check.
        if host.len() <= 64 {
            dn.push(DnType::CommonName, host);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(gen_err)?;
        Ok(cert.der().clone())
    }

    /// The TLS server configuration presenting a leaf for `host`, from the cache or freshly
    /// minted. Concurrent callers for the same uncached host share one minting.
    pub async fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        let cell = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slot(&key);
        cell.get_or_try_init(|| async { self.build_server_config(&key) })
            .await
            .cloned()
    }

    /// How many hosts currently have a cached leaf.
    pub fn cached_leaves(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn build_server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let leaf = self.mint_leaf(host)?;
        let certified = Arc::new(CertifiedKey::new(vec![leaf], self.leaf_signing_key.clone()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| CaError::Tls { source })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(certified)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = self.sessions.clone();
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

type Slot = Arc<OnceCell<Arc<ServerConfig>>>;

/// Hosts to server configurations, evicting the least recently used eighth when full.
struct LeafCache {
    capacity: usize,
    clock: u64,
    entries: HashMap<Box<str>, (Slot, u64)>,
}

impl LeafCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn slot(&mut self, key: &str) -> Slot {
        self.clock += 1;
        let clock = self.clock;
        if let Some((slot, used)) = self.entries.get_mut(key) {
            *used = clock;
            return slot.clone();
        }
        if self.entries.len() >= self.capacity {
            self.evict();
        }
        let slot = Slot::default();
        self.entries.insert(key.into(), (slot.clone(), clock));
        slot
    }

    /// Drops the least recently used eighth (at least one entry); amortised O(1) per insert.
    fn evict(&mut self) {
        let mut ages: Vec<u64> = self.entries.values().map(|(_, used)| *used).collect();
        let n = (ages.len() / 8).max(1);
        if n > ages.len() {
            return;
        }
        let (_, threshold, _) = ages.select_nth_unstable(n - 1);
        let threshold = *threshold;
        self.entries.retain(|_, (_, used)| *used > threshold);
    }
}

fn host_san(host: &str) -> Result<SanType, CaError> {
    let invalid = || CaError::InvalidHost {
        host: host.to_owned(),
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = host.trim_end_matches('.');
    DnsName::try_from(name).map_err(|_| invalid())?;
    Ok(SanType::DnsName(name.try_into().map_err(|_| invalid())?))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Keep the serial positive and non-zero in DER.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::with_cache_capacity(16).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn pem_is_a_certificate_and_holds_no_key() {
        let ca = ca();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!ca.cert_pem().contains("PRIVATE KEY"));
    }

    #[test]
    fn mints_dns_and_ip_leaves_and_rejects_garbage() {
        let ca = ca();
        assert!(ca.mint_leaf("api.github.com").is_ok());
        assert!(ca.mint_leaf("127.0.0.1").is_ok());
        assert!(ca.mint_leaf("[::1]").is_ok());
        assert!(ca.mint_leaf("a".repeat(200).as_str()).is_err());
        for bad in ["", "bad host", "ex\u{e9}mple.com", "a..b", "-"] {
            assert!(
                matches!(ca.mint_leaf(bad), Err(CaError::InvalidHost { .. })),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn cache_is_bounded_and_single_flight() {
        let ca = Arc::new(ca());
        let first = ca
            .server_config("a.example")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let again = ca
            .server_config("A.example.")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(Arc::ptr_eq(&first, &again), "cached config reused");

        let mut tasks = Vec::new();
        for _ in 0..8 {
            let ca = ca.clone();
            tasks.push(tokio::spawn(
                async move { ca.server_config("b.example").await },
            ));
        }
        let mut configs = Vec::new();
        for t in tasks {
            configs.push(
                t.await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        assert!(configs.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));

        for i in 0..200 {
            ca.server_config(&format!("h{i}.example"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(ca.cached_leaves() <= 16);
        }
    }
}
