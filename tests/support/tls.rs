//! TLS for the end-to-end tests: certificates made with rcgen, stunnel
//! processes that put TLS in front of SIPp (Debian's SIPp has none), and a
//! rustls client that tells which certificate a listener serves.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};

use super::Running;

/// A certificate and its key as PEM files; `chain` holds the leaf, then
/// the CA.
pub struct Identity {
    pub chain: PathBuf,
    pub key: PathBuf,
    /// The leaf as DER: the first certificate a peer is served.
    pub der: Vec<u8>,
}

/// A CA and the certificates it signed, written to a directory.
pub struct Pki {
    pub ca: PathBuf,
    pub ca_der: Vec<u8>,
    /// For IP 127.0.0.1: the gateway's, and its TLS backends'.
    pub server: Identity,
    /// A second one for 127.0.0.1, what a reload switches to.
    pub server_two: Identity,
    /// For mutual TLS: what a caller presents.
    pub client: Identity,
}

impl Pki {
    pub fn make(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "sipshard e2e CA");
        let ca = params.self_signed(&ca_key).expect("the CA");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("the CA is written");
        let issue = |name, usage| leaf(dir, name, usage, &ca, &ca_key);
        Pki {
            ca: ca_path,
            ca_der: ca.der().to_vec(),
            server: issue("server", ExtendedKeyUsagePurpose::ServerAuth),
            server_two: issue("server-two", ExtendedKeyUsagePurpose::ServerAuth),
            client: issue("client", ExtendedKeyUsagePurpose::ClientAuth),
        }
    }
}

/// A certificate for IP 127.0.0.1 named `name`, signed by `ca`; written
/// as `name-chain.pem` and `name-key.pem`.
fn leaf(
    dir: &Path,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Identity {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("sipshard e2e {name}"));
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca, ca_key).expect("a certificate");
    let identity = Identity {
        chain: dir.join(format!("{name}-chain.pem")),
        key: dir.join(format!("{name}-key.pem")),
        der: cert.der().to_vec(),
    };
    std::fs::write(&identity.chain, cert.pem() + &ca.pem()).expect("the chain is written");
    std::fs::write(&identity.key, key.serialize_pem()).expect("the key is written");
    identity
}

/// Which end of TLS a stunnel is.
pub enum Side<'a> {
    /// Takes TCP and connects over TLS: verifies the server's certificate
    /// for 127.0.0.1 against `ca`, and presents `identity` when asked.
    Client {
        ca: &'a Path,
        identity: Option<&'a Identity>,
    },
    /// Takes TLS with `identity` and connects over TCP.
    Server { identity: &'a Identity },
}

/// A stunnel (Debian `stunnel4`) in the foreground, from 127.0.0.1:`accept`
/// to 127.0.0.1:`connect`, logging to `name`.log in `dir`; returns once
/// it listens.
pub fn stunnel(dir: &Path, name: &str, accept: u16, connect: u16, side: Side<'_>) -> Running {
    let config = dir.join(format!("{name}.conf"));
    std::fs::write(&config, stunnel_config(name, accept, connect, &side))
        .expect("the stunnel configuration is written");
    let log = dir.join(format!("{name}.log"));
    let child = Command::new("stunnel")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("stunnel is installed (Debian package stunnel4)");
    let stunnel = Running(child);
    wait_for_listening(accept, &log);
    stunnel
}

fn stunnel_config(name: &str, accept: u16, connect: u16, side: &Side<'_>) -> String {
    let mut text = format!(
        "foreground = yes\npid =\ndebug = info\n[{name}]\n\
         accept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\n\
         socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
    );
    let identity = match side {
        Side::Client { ca, identity } => {
            text += &format!(
                "client = yes\nCAfile = {}\nverifyChain = yes\ncheckIP = 127.0.0.1\n",
                ca.display()
            );
            *identity
        }
        Side::Server { identity } => Some(*identity),
    };
    if let Some(identity) = identity {
        text += &format!(
            "cert = {}\nkey = {}\n",
            identity.chain.display(),
            identity.key.display()
        );
    }
    text
}

/// Waits until something listens on TCP 127.0.0.1:`port`, from the
/// kernel's table: connecting to find out would make a stunnel open a
/// TLS connection of its own. `log` is what to read when it never does.
pub fn wait_for_listening(port: u16, log: &Path) {
    let local = format!("0100007F:{port:04X}");
    let started = Instant::now();
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let listening = table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
        });
        if listening {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing listens on 127.0.0.1:{port}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The leaf certificate (DER) a TLS listener at `address` serves, from a
/// full handshake by a rustls client that trusts `ca_der` and checks the
/// certificate for 127.0.0.1.
pub fn served_leaf(address: &str, ca_der: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .expect("the CA is a certificate");
    // The crate's one crypto provider, whichever rustls is built with.
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::from(std::net::IpAddr::from(Ipv4Addr::LOCALHOST));
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    let mut socket = TcpStream::connect(address).expect("the TLS listener accepts");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    while tls.is_handshaking() {
        tls.complete_io(&mut socket)
            .unwrap_or_else(|e| panic!("a TLS handshake with {address}: {e}"));
    }
    let leaf = tls.peer_certificates().expect("a certificate")[0].to_vec();
    tls.send_close_notify();
    let _ = tls.complete_io(&mut socket);
    leaf
}
