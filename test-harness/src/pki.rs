//! A throw-away PKI made at run time: one CA, and server/client leaves signed by it.
//!
//! Nothing is checked in: every run (every [`TestPki::new`]) mints a fresh CA, so tests never depend on
//! key material that can expire or leak. Keys are ECDSA P-256 (rcgen's default), which both rustls and
//! Envoy's BoringSSL accept, and the crypto is `ring` throughout (no aws-lc build).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The harness's error type: the harness only reports failures to a test, it never matches on them.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Common name of every CA made by [`TestPki::new`].
pub const CA_COMMON_NAME: &str = "egress-lab test CA";

/// Common name of client certificates made by [`TestPki::issue_client`].
pub const CLIENT_COMMON_NAME: &str = "workload";

/// Name the on-the-fly server certificate is issued for when the client sends no SNI.
pub const NO_SNI_NAME: &str = "localhost";

/// A leaf certificate and its private key, both PEM (the key as PKCS#8), ready to hand to Envoy or rustls.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertKey {
    fn cert_chain_der(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        if chain.is_empty() {
            return Err("no certificate in PEM".into());
        }
        Ok(chain)
    }

    fn key_der(&self) -> Result<PrivateKeyDer<'static>, Error> {
        Ok(PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())?)
    }
}

/// A test certificate authority. Cheap to clone: clones share the same CA.
#[derive(Clone, Debug)]
pub struct TestPki {
    ca: Arc<CertAuthority>,
}

/// The CA's signing state, shared with the on-the-fly resolver that runs inside TLS handshakes.
struct CertAuthority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for CertAuthority {
    // `CertifiedIssuer`'s own Debug elides the key; the PEM is public but only noise in test output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl TestPki {
    /// Mints a new CA named [`CA_COMMON_NAME`].
    pub fn new() -> Result<Self, Error> {
        let mut params = CertificateParams::default();
        set_validity(&mut params);
        params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let cert_pem = issuer.pem();
        Ok(Self { ca: Arc::new(CertAuthority { issuer, cert_pem }) })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Issues a server-auth leaf for `dns_names` (the first is also the CN). Entries that parse as IP
    /// addresses become IP SANs, so `"127.0.0.1"` works too.
    pub fn issue_server(&self, dns_names: &[&str]) -> Result<CertKey, Error> {
        let first = dns_names.first().ok_or("a server certificate needs at least one name")?;
        let mut params = CertificateParams::new(dns_names.iter().map(|name| name.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, *first);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign_leaf(params)
    }

    /// Issues a server-auth leaf for `dns_names` that also names a workload, as an Istio gateway certificate does
    /// (`uri_san`, e.g. the gateway's SPIFFE ID).
    pub fn issue_server_with_uri(&self, dns_names: &[&str], uri_san: &str) -> Result<CertKey, Error> {
        let first = dns_names.first().ok_or("a server certificate needs at least one DNS name")?;
        let mut params = CertificateParams::new(dns_names.iter().map(|name| name.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, *first);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names.push(SanType::URI(uri_san.try_into()?));
        self.sign_leaf(params)
    }

    /// Issues a client-auth leaf with CN [`CLIENT_COMMON_NAME`]; `uri_san` (typically a SPIFFE ID such as
    /// `spiffe://cluster.local/ns/app/sa/sleep`) becomes its only SAN.
    pub fn issue_client(&self, uri_san: Option<&str>) -> Result<CertKey, Error> {
        self.issue_client_with_uris(uri_san.as_slice())
    }

    /// A client-auth leaf whose SANs are `uris`, in order: as many URI SANs as the test wants, which no Istio CA
    /// would sign (X.509-SVID §2 allows exactly one).
    pub fn issue_client_with_uris(&self, uris: &[&str]) -> Result<CertKey, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, CLIENT_COMMON_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        for uri in uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into()?));
        }
        self.sign_leaf(params)
    }

    /// Writes `dir/name.crt` and `dir/name.key` and returns their paths (in that order).
    pub fn write_files(&self, dir: &Path, name: &str, ck: &CertKey) -> io::Result<(PathBuf, PathBuf)> {
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        fs::write(&cert_path, &ck.cert_pem)?;
        write_private(&key_path, ck.key_pem.as_bytes())?;
        Ok((cert_path, key_path))
    }

    /// Writes the CA certificate to `dir/ca.crt` and returns its path.
    pub fn write_ca(&self, dir: &Path) -> io::Result<PathBuf> {
        let path = dir.join("ca.crt");
        fs::write(&path, self.ca_pem())?;
        Ok(path)
    }

    /// A rustls server config presenting `ck` (no client auth, no ALPN: set `alpn_protocols` as needed).
    pub fn server_config(&self, ck: &CertKey) -> Result<ServerConfig, Error> {
        Ok(ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(ck.cert_chain_der()?, ck.key_der()?)?)
    }

    /// A rustls server config that answers ANY SNI with a leaf issued on the fly by this CA (cached per
    /// name), and a leaf for [`NO_SNI_NAME`] when the client sends no SNI. This is what lets one upstream
    /// stand in for every external host a test routes through Envoy.
    pub fn any_sni_server_config(&self) -> Result<ServerConfig, Error> {
        let resolver = IssueForSni { pki: self.clone(), cache: Mutex::default() };
        Ok(ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver)))
    }

    /// A rustls client config trusting only this CA, presenting `client_cert` when given (mTLS).
    pub fn client_config(&self, client_cert: Option<&CertKey>) -> Result<ClientConfig, Error> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(root_store(self.ca_pem())?);
        Ok(match client_cert {
            Some(ck) => builder.with_client_auth_cert(ck.cert_chain_der()?, ck.key_der()?)?,
            None => builder.with_no_client_auth(),
        })
    }

    fn sign_leaf(&self, mut params: CertificateParams) -> Result<CertKey, Error> {
        set_validity(&mut params);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // BoringSSL and webpki both build chains more reliably with an AKI pointing at the CA.
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca.issuer)?;
        Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Validity window shared by every certificate: fixed and generous, so a test machine's clock never matters,
/// yet (unlike rcgen's default of 1975..4096) well within what every X.509 stack and Envoy's expiry stats expect.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
}

/// The one crypto provider of the harness. Passed explicitly rather than relying on rustls's process-wide
/// default, which panics if feature unification ever enables a second provider.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding every certificate in `ca_pem`.
pub(crate) fn root_store(ca_pem: &str) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    if roots.is_empty() {
        return Err("no CA certificate in PEM".into());
    }
    Ok(roots)
}

/// Certificate resolver behind [`TestPki::any_sni_server_config`].
#[derive(Debug)]
struct IssueForSni {
    pki: TestPki,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl IssueForSni {
    fn issue(&self, name: &str) -> Result<Arc<CertifiedKey>, Error> {
        let ck = self.pki.issue_server(&[name])?;
        Ok(Arc::new(CertifiedKey::from_der(ck.cert_chain_der()?, ck.key_der()?, &provider())?))
    }
}

impl ResolvesServerCert for IssueForSni {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name().unwrap_or(NO_SNI_NAME).to_ascii_lowercase();
        // Holding the lock while issuing keeps concurrent handshakes for one name from minting twice;
        // issuing takes well under a millisecond.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cache.get(&name) {
            return Some(Arc::clone(hit));
        }
        match self.issue(&name) {
            Ok(certified) => Some(Arc::clone(cache.entry(name).or_insert(certified))),
            Err(err) => {
                // rustls can only abort the handshake here; say why on stderr, which the test output shows.
                eprintln!("egress-harness: cannot issue a certificate for SNI {name:?}: {err}");
                None
            }
        }
    }
}

/// Writes a file only its owner can read (mode 600): private keys, signing keys.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};

    /// Runs a full handshake between two in-memory connections; returns the error either side hit.
    fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
        let mut wire = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            wire.clear();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets()?;
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        Ok(())
    }

    fn connect(pki: &TestPki, server_config: ServerConfig, name: &str) -> Result<ServerConnection, rustls::Error> {
        let client_config = Arc::new(pki.client_config(None).unwrap());
        let mut client = ClientConnection::new(client_config, ServerName::try_from(name.to_string()).unwrap()).unwrap();
        let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
        handshake(&mut client, &mut server)?;
        Ok(server)
    }

    #[test]
    fn issued_server_cert_verifies_against_the_ca_for_its_name_only() {
        let pki = TestPki::new().unwrap();
        let ck = pki.issue_server(&["api.example.com", "127.0.0.1"]).unwrap();
        connect(&pki, pki.server_config(&ck).unwrap(), "api.example.com").unwrap();
        let err = connect(&pki, pki.server_config(&ck).unwrap(), "other.example.com").unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn a_different_ca_is_not_trusted() {
        let pki = TestPki::new().unwrap();
        let stranger = TestPki::new().unwrap();
        let ck = stranger.issue_server(&["api.example.com"]).unwrap();
        let err = connect(&pki, stranger.server_config(&ck).unwrap(), "api.example.com").unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn any_sni_config_issues_for_whatever_name_is_asked() {
        let pki = TestPki::new().unwrap();
        for name in ["a.example", "b.example.org", "a.example"] {
            let server = connect(&pki, pki.any_sni_server_config().unwrap(), name).unwrap();
            assert_eq!(server.server_name(), Some(name));
        }
    }

    #[test]
    fn client_cert_carries_the_uri_san_and_is_accepted_for_mtls() {
        let pki = TestPki::new().unwrap();
        let spiffe = "spiffe://cluster.local/ns/app/sa/sleep";
        let client_ck = pki.issue_client(Some(spiffe)).unwrap();
        // The URI SAN is stored verbatim as an IA5String inside the DER.
        let der = client_ck.cert_chain_der().unwrap().remove(0);
        assert!(der.windows(spiffe.len()).any(|w| w == spiffe.as_bytes()));

        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(root_store(pki.ca_pem()).unwrap()),
            provider(),
        )
        .build()
        .unwrap();
        let server_ck = pki.issue_server(&["mtls.example"]).unwrap();
        let server_config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(server_ck.cert_chain_der().unwrap(), server_ck.key_der().unwrap())
            .unwrap();
        let server_config = Arc::new(server_config);
        let name = ServerName::try_from("mtls.example").unwrap();

        let with_cert = Arc::new(pki.client_config(Some(&client_ck)).unwrap());
        let mut client = ClientConnection::new(with_cert, name.clone()).unwrap();
        let mut server = ServerConnection::new(Arc::clone(&server_config)).unwrap();
        handshake(&mut client, &mut server).unwrap();
        assert_eq!(server.peer_certificates().map(<[_]>::len), Some(1));

        let without_cert = Arc::new(pki.client_config(None).unwrap());
        let mut client = ClientConnection::new(without_cert, name).unwrap();
        let mut server = ServerConnection::new(server_config).unwrap();
        assert!(handshake(&mut client, &mut server).is_err());
    }

    #[test]
    fn files_are_written_where_promised() {
        let pki = TestPki::new().unwrap();
        let dir = std::env::temp_dir().join(format!("egress-harness-pki-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let ck = pki.issue_server(&["localhost"]).unwrap();
        let (crt, key) = pki.write_files(&dir, "upstream", &ck).unwrap();
        assert_eq!(crt, dir.join("upstream.crt"));
        assert_eq!(fs::read_to_string(&key).unwrap(), ck.key_pem);
        assert_eq!(fs::read_to_string(pki.write_ca(&dir).unwrap()).unwrap(), pki.ca_pem());
        fs::remove_dir_all(&dir).unwrap();
    }
}
