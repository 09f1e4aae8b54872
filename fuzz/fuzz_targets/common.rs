//! Checks shared by the fuzz targets. Each target is its own crate and uses
//! only part of this module.
#![allow(dead_code)]

use sipshard::sip::{Contact, HeaderName, Limits, Message, StartLine};

/// Room for the largest datagram plus everything forwarding adds.
pub const OUT_BYTES: usize = 70_000;

/// Limits small enough that every one of them trips on ordinary messages.
pub fn tiny() -> Limits {
    Limits {
        datagram_bytes_max: 512,
        headers_max: 6,
        header_line_bytes_max: 64,
        via_values_max: 2,
    }
}

/// Limits for scanning what we wrote: a hop adds a Via value, up to three
/// header fields and `received`/`rport`, so a message just inside the
/// default limits may come out just outside them. That is by design; the
/// rescan allows for it.
pub fn relaxed() -> Limits {
    let d = Limits::default();
    Limits {
        datagram_bytes_max: d.datagram_bytes_max * 2,
        headers_max: d.headers_max + 8,
        header_line_bytes_max: d.header_line_bytes_max + 128,
        via_values_max: d.via_values_max + 1,
    }
}

/// Whether `inner` is a sub-slice of `outer` (an empty slice may point
/// anywhere).
pub fn within(outer: &[u8], inner: &[u8]) -> bool {
    if inner.is_empty() {
        return true;
    }
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    i >= o && i + inner.len() <= o + outer.len()
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub type Pair = (Vec<u8>, Vec<u8>);

/// (name as written, value) of every header the editor does not own.
pub fn unowned_headers(m: &Message<'_>) -> Vec<Pair> {
    m.headers()
        .filter(|h| {
            !matches!(
                h.name,
                HeaderName::Via
                    | HeaderName::Route
                    | HeaderName::RecordRoute
                    | HeaderName::MaxForwards
            )
        })
        .map(|h| (h.name_text.to_vec(), h.value.to_vec()))
        .collect()
}

pub fn via_values(m: &Message<'_>) -> Vec<Vec<u8>> {
    m.vias().map(|v| v.value.to_vec()).collect()
}

/// Calls every accessor of an accepted message and checks that the views
/// agree with each other and with the datagram.
pub fn check_accessors(m: &Message<'_>) {
    let datagram = m.datagram();
    let bytes = m.as_bytes();
    assert!(within(datagram, bytes));
    assert!(within(datagram, m.body()));
    assert!(bytes.ends_with(m.body()));
    match m.content_length() {
        Some(length) => assert_eq!(m.body().len(), length as usize),
        None => assert!(datagram.ends_with(m.body())),
    }
    match *m.start_line() {
        StartLine::Request {
            method,
            method_text,
            uri,
            uri_text,
        } => {
            assert!(m.is_request());
            assert_eq!(m.method(), Some(method));
            assert_eq!(m.status_code(), None);
            assert_eq!(m.request_uri(), Some(&uri));
            assert!(bytes.starts_with(method_text));
            assert!(within(datagram, uri_text));
            assert_eq!(m.cseq().method_text, method_text);
            assert_ne!(m.max_forwards(), Some(0));
            let _ = (
                uri.lr(),
                uri.transport(),
                uri.maddr(),
                uri.port_or_default(),
            );
            let _ = uri.param(b"user");
        }
        StartLine::Response { code, reason } => {
            assert!(!m.is_request());
            assert_eq!(m.method(), None);
            assert!(m.request_uri().is_none());
            assert_eq!(m.status_code(), Some(code));
            assert!((100..=699).contains(&code));
            assert!(within(datagram, reason));
        }
    }
    let mut headers = 0;
    for h in m.headers() {
        headers += 1;
        assert!(within(datagram, h.name_text) && within(datagram, h.value));
        assert_eq!(HeaderName::classify(h.name_text), h.name);
        assert!(!h.value.first().is_some_and(|&b| is_lws(b)));
        assert!(!h.value.last().is_some_and(|&b| is_lws(b)));
    }
    assert!(headers >= 5);
    let vias: Vec<_> = m.vias().collect();
    assert_eq!(vias.len(), m.via_count());
    assert_eq!(vias.first(), Some(m.top_via()));
    for via in &vias {
        let _ = via.has_magic_cookie();
    }
    assert!(!m.call_id().is_empty());
    let _ = (
        m.cseq().number,
        m.max_forwards(),
        m.header(HeaderName::Subject),
    );
    for addr in m.routes().chain(m.record_routes()).flatten() {
        if let Ok(uri) = addr.uri() {
            let _ = (
                uri.lr(),
                uri.transport(),
                uri.maddr(),
                uri.port_or_default(),
            );
        }
    }
    for contact in m.contacts() {
        if let Ok(Contact::Address(addr)) = contact {
            let _ = addr.uri();
        }
    }
    for addr in [m.from(), m.to()] {
        if let Ok(uri) = addr.uri() {
            let _ = (uri.user, uri.host, uri.port, uri.param(b"tag"));
        }
    }
    for tag in m.proxy_require().chain(m.require()) {
        assert!(!tag.is_empty());
    }
}
