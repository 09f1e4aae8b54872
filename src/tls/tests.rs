use std::io::{Read as _, Write as _};

use super::test_pki::Pki;
use super::*;

fn files(pki: &Pki) -> TlsFiles {
    TlsFiles {
        cert: Some(pki.cert.clone()),
        key: Some(pki.key.clone()),
        client_ca: None,
        backend_ca: Some(pki.ca.clone()),
    }
}

/// Runs a handshake between two rustls connections in memory, then one
/// message each way; `Err` with the first error either side raised.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<Vec<u8>, rustls::Error> {
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut s = rustls::ServerConnection::new(server)?;
    let mut c = rustls::ClientConnection::new(client, name)?;
    c.writer().write_all(b"OPTIONS sip:x SIP/2.0\r\n").ok();
    for _ in 0..10 {
        let mut wire = Vec::new();
        c.write_tls(&mut wire).ok();
        s.read_tls(&mut wire.as_slice()).ok();
        s.process_new_packets()?;
        let mut back = Vec::new();
        s.write_tls(&mut back).ok();
        c.read_tls(&mut back.as_slice()).ok();
        c.process_new_packets()?;
    }
    let mut got = vec![0; 64];
    let n = s.reader().read(&mut got).unwrap_or(0);
    got.truncate(n);
    Ok(got)
}

#[test]
fn a_chain_and_its_key_serve_and_the_backend_side_verifies_them() {
    let pki = Pki::make("tls-ok");
    let context = TlsContext::load(&files(&pki), true).expect("valid files");
    let shard = context.for_shard();
    let server = shard.server.clone().expect("a server side");
    let got = handshake(server, shard.client.clone()).expect("handshake");
    assert_eq!(got, b"OPTIONS sip:x SIP/2.0\r\n");
}

#[test]
fn each_shard_gets_its_own_session_caches() {
    let pki = Pki::make("tls-shards");
    let context = TlsContext::load(&files(&pki), true).expect("valid files");
    let (a, b) = (context.for_shard(), context.for_shard());
    let (sa, sb) = (a.server.expect("server"), b.server.expect("server"));
    assert!(!Arc::ptr_eq(&sa.session_storage, &sb.session_storage));
    assert!(!Arc::ptr_eq(&a.client, &b.client));
}

#[test]
fn a_listener_without_a_certificate_is_refused() {
    let got = TlsContext::load(&TlsFiles::default(), true);
    assert!(matches!(got, Err(TlsError::NoCertificate)), "{got:?}");
    // Without a listener, only the backend side is built.
    let context = TlsContext::load(&TlsFiles::default(), false).expect("client side");
    assert!(context.server.is_none());
}

#[test]
fn unreadable_and_non_pem_files_are_refused_with_their_path() {
    let pki = Pki::make("tls-bad-files");
    let mut f = files(&pki);
    f.cert = Some(pki.dir.join("missing.pem"));
    let got = TlsContext::load(&f, true);
    assert!(matches!(got, Err(TlsError::Read { .. })), "{got:?}");
    let junk = pki.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    f.cert = Some(junk.clone());
    let error = TlsContext::load(&f, true).expect_err("junk refused");
    assert!(matches!(error, TlsError::NoPem { .. }), "{error:?}");
    assert!(error.to_string().contains("junk.pem"), "{error}");
    f.cert = Some(pki.cert.clone());
    f.key = Some(junk);
    let got = TlsContext::load(&f, true);
    assert!(
        matches!(
            got,
            Err(TlsError::NoPem {
                what: "private key",
                ..
            })
        ),
        "{got:?}"
    );
}

#[test]
fn a_key_that_is_not_the_chains_is_refused() {
    let pki = Pki::make("tls-mismatch");
    let mut f = files(&pki);
    f.key = Some(pki.other_key.clone());
    let got = TlsContext::load(&f, true);
    assert!(matches!(got, Err(TlsError::Refused { .. })), "{got:?}");
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::make("tls-mutual");
    let mut f = files(&pki);
    f.client_ca = Some(pki.ca.clone());
    let context = TlsContext::load(&f, true).expect("valid files");
    let server = context.server.clone().expect("server");
    assert!(handshake(server, context.client.clone()).is_err());
}

#[test]
fn a_backend_whose_certificate_is_not_from_backend_ca_is_refused() {
    let pki = Pki::make("tls-untrusted");
    let other = Pki::make("tls-untrusted-other");
    let mut f = files(&pki);
    f.backend_ca = Some(other.ca.clone());
    let context = TlsContext::load(&f, true).expect("valid files");
    let server = context.server.clone().expect("server");
    assert!(handshake(server, context.client.clone()).is_err());
}
