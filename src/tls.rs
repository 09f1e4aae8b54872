//! TLS (rustls, aws-lc-rs): the server side of `tls:` listeners and the client
//! side toward TLS backends, built from PEM files off the packet path (at
//! start, by `--check-config`, on SIGHUP) and handed to the shards, which
//! run each connection through rustls's sans-I/O API on their own loops.
//!
//! TLS 1.2 and 1.3 only. Backends' certificates are always verified, for
//! the backend's IP address, against `backend_ca` or the system's roots.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Sessions each shard remembers for resumption, per side.
const SESSIONS_PER_SHARD: usize = 256;

/// Where the PEM files are: `--tls-cert`, `--tls-key` and the `[tls]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Our certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Require client certificates chaining to these (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Backends' certificates must chain to these; the system's roots when unset.
    pub backend_ca: Option<PathBuf>,
}

/// Why the TLS settings cannot be used; each names its fix.
#[derive(Debug)]
pub enum TlsError {
    /// A `tls:` listener with no certificate or key.
    NoCertificate,
    Read {
        path: PathBuf,
        error: io::Error,
    },
    /// The file holds no PEM item of the kind wanted, or a broken one.
    NoPem {
        path: PathBuf,
        what: &'static str,
    },
    /// rustls refused the chain and key (a key that is not the chain's
    /// leaf's, a key type it cannot use) or a CA bundle.
    Refused {
        path: PathBuf,
        why: rustls::Error,
    },
    /// A CA file whose certificates make no verifier.
    BadCa {
        path: PathBuf,
        why: String,
    },
}

impl TlsError {
    /// What the operator should do about it.
    pub fn fix(&self) -> &'static str {
        match self {
            TlsError::NoCertificate => "give --tls-cert and --tls-key (or cert and key in [tls])",
            TlsError::Read { .. } => "check the path and that sipshard may read it",
            TlsError::NoPem { .. } => "give a PEM file (-----BEGIN ...-----) of that kind",
            TlsError::Refused { .. } => {
                "give the key of the chain's first certificate (RSA, ECDSA or Ed25519)"
            }
            TlsError::BadCa { .. } => "give a PEM bundle of CA certificates",
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::NoCertificate => write!(f, "a tls: listener needs a certificate and a key"),
            TlsError::Read { path, error } => write!(f, "{}: {error}", path.display()),
            TlsError::NoPem { path, what } => {
                write!(f, "{}: no PEM {what} in it", path.display())
            }
            TlsError::Refused { path, why } => write!(f, "{}: {why}", path.display()),
            TlsError::BadCa { path, why } => write!(f, "{}: {why}", path.display()),
        }
    }
}

impl std::error::Error for TlsError {}

/// The TLS configurations every shard starts its connections from.
#[derive(Debug)]
pub struct TlsContext {
    /// For `tls:` listeners; `None` without a certificate.
    pub server: Option<Arc<ServerConfig>>,
    /// Toward TLS backends.
    pub client: Arc<ClientConfig>,
}

/// One shard's copy: its own session caches, so that no two shards share
/// the caches' locks.
#[derive(Clone, Debug)]
pub struct ShardTls {
    pub server: Option<Arc<ServerConfig>>,
    pub client: Arc<ClientConfig>,
}

impl TlsContext {
    /// Reads and checks the files. `listens`: a `tls:` listener needs a
    /// certificate and key.
    pub fn load(files: &TlsFiles, listens: bool) -> Result<TlsContext, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some(Arc::new(server_config(
                &provider,
                cert,
                key,
                files.client_ca.as_deref(),
            )?)),
            _ if listens => return Err(TlsError::NoCertificate),
            _ => None,
        };
        let client = Arc::new(client_config(&provider, files.backend_ca.as_deref())?);
        Ok(TlsContext { server, client })
    }

    /// A shard's copy, with session caches of its own.
    pub fn for_shard(&self) -> ShardTls {
        let server = self.server.as_ref().map(|s| {
            let mut config = ServerConfig::clone(s);
            config.session_storage = ServerSessionMemoryCache::new(SESSIONS_PER_SHARD);
            Arc::new(config)
        });
        let mut client = ClientConfig::clone(&self.client);
        client.resumption = Resumption::in_memory_sessions(SESSIONS_PER_SHARD);
        ShardTls {
            server,
            client: Arc::new(client),
        }
    }
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let chain = certificates(cert)?;
    let key_der = private_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|why| refused(cert, why))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|why| bad_ca(ca, why))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key_der)
        .map_err(|why| refused(key, why))
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    backend_ca: Option<&Path>,
) -> Result<ClientConfig, TlsError> {
    let roots = match backend_ca {
        Some(ca) => roots(ca)?,
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|why| refused(Path::new("(built in)"), why))?;
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The system's CA certificates (`/etc/ssl/certs`); those that do not
/// parse are skipped, as every TLS client does.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!(%error, "a system CA certificate could not be read");
    }
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system CA certificates: TLS backends need [tls] backend_ca");
    }
    tracing::debug!(added, ignored, "system CA certificates");
    store
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store
            .add(cert)
            .map_err(|why| bad_ca(path, why.to_string()))?;
    }
    Ok(store)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| no_pem(path, "certificate"))?;
    match certs.is_empty() {
        true => Err(no_pem(path, "certificate")),
        false => Ok(certs),
    }
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|_| no_pem(path, "private key"))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn no_pem(path: &Path, what: &'static str) -> TlsError {
    TlsError::NoPem {
        path: path.to_path_buf(),
        what,
    }
}

fn refused(path: &Path, why: rustls::Error) -> TlsError {
    TlsError::Refused {
        path: path.to_path_buf(),
        why,
    }
}

fn bad_ca(path: &Path, why: impl ToString) -> TlsError {
    TlsError::BadCa {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

#[cfg(test)]
mod tests;

/// Certificates for tests: a CA, a leaf for 127.0.0.1 signed by it, and a
/// key that is not the leaf's.
#[cfg(test)]
pub(crate) mod test_pki {
    use std::path::PathBuf;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    pub(crate) struct Pki {
        pub dir: PathBuf,
        pub ca: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
        pub other_key: PathBuf,
    }

    impl Pki {
        pub(crate) fn make(name: &str) -> Pki {
            let dir = std::env::temp_dir().join(format!("sipshard-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let ca_key = KeyPair::generate().expect("key");
            let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).expect("CA");
            let key = KeyPair::generate().expect("key");
            let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
                .expect("params")
                .signed_by(&key, &ca_cert, &ca_key)
                .expect("leaf");
            let other = KeyPair::generate().expect("key");
            let write = |file: &str, text: String| {
                let path = dir.join(file);
                std::fs::write(&path, text).expect("write");
                path
            };
            Pki {
                ca: write("ca.pem", ca_cert.pem()),
                cert: write("cert.pem", leaf.pem()),
                key: write("key.pem", key.serialize_pem()),
                other_key: write("other.pem", other.serialize_pem()),
                dir,
            }
        }
    }
}
