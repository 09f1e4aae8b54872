//! Property tests for the scanner, the editor and the local-response writer.
//!
//! What they prove, for every case proptest generates:
//!
//! * **Totality** (`scan_is_total_on_*`): `Scanner::scan` never panics, on
//!   arbitrary bytes or on generated valid messages mangled by byte
//!   flips, truncations, deletions, duplicated lines and insertions of the
//!   bytes that structure SIP (CR, LF, NUL, `:`, `,`, `;`, `"`, `<`, ...),
//!   under the default `Limits`, with Proxy-Require tags supported, and under
//!   small random limits. For an accepted message every accessor is total and the
//!   views agree with each other (`via_count` is the number of `vias()`,
//!   the top Via is the first one, the body is Content-Length octets of the
//!   datagram, ...); an accepted request forwards into a message that scans
//!   again with every byte the editor does not own intact, and its 100 and
//!   503 scan; an accepted response that names us forwards into a message
//!   that scans. For a rejection that asks for a reply, `write_rejection`
//!   never panics (any buffer size) and what it writes starts with
//!   `SIP/2.0 <code> ` and ends with `Content-Length: 0\r\n\r\n`.
//! * **Transparency of forwarding** (`forward_request_*`,
//!   `forward_response_*`): for generated valid requests, every header other
//!   than Via, Route, Record-Route and Max-Forwards comes out byte for byte
//!   and in order, and so do the start line and the body; Max-Forwards is
//!   decremented (70 when absent); our Via goes on top with branch
//!   `z9hG4bK` + key; the sender's Via gets `received` and `rport` exactly
//!   as RFC 3261 §18.2.1 and RFC 3581 §4 say and the Vias below it are
//!   untouched; a first Route naming us is popped and any other Route list
//!   is kept; our Record-Route goes above the existing ones. A response
//!   whose top Via is ours comes out as the same bytes minus that one Via
//!   value; one that is not ours, or whose only Via is ours, is refused.
//! * **Round trip** (`*_round_trip`): a generated request or response
//!   rendered to bytes scans back to every field that was put in: method,
//!   Request-URI parts, status code and reason, every Via field, Call-ID,
//!   CSeq, Max-Forwards, From/To URI user, host and tag, Content-Length,
//!   body, and the header list itself (count, order, name as written and
//!   classified, value), with compact header names, random letter case,
//!   folded values, bare-LF line ends and leading keep-alive CRLFs.
//! * **Exact limits** (`limits_are_exact`): a generated message scans with
//!   `Limits` set exactly to its size, header count, longest field (folds
//!   included) and Via count, and each limit one lower rejects it with the
//!   fault that names that limit.
//!
//! Fixed cases follow the properties: the RFC 4475 and bench messages, and
//! the committed fuzz seed corpus replayed through what each fuzz target
//! checks (`replay_scan_input`, `replay_edit_input`, `replay_proxy_input`;
//! `write_proxy_seed_corpus` writes the proxy seeds), so that a crash found
//! by `fuzz/` becomes a plain `#[test]` here (see `fuzz/README.md`). Bugs
//! found in `src/` are regression tests at the end.
//!
//! Case counts are kept small enough for `cargo test --release --all` (about
//! a second for the whole file in release, ten in debug); `PROPTEST_CASES=N`
//! overrides them for a longer run.

// The checks the fuzz targets make, shared with them (`scan_target`,
// `edit_target` and `proxy_target` are the targets themselves).
#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use common::{
    check_accessors, edit_target, editor, host_ip, proxy_input, proxy_target, scan_target, tiny,
    unowned_headers, via_values, OUT_BYTES, PEERS, PROXY_HOST, PROXY_PORT,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use sipshard::sip::{
    EditError, Fault, Forward, HeaderName, Limits, Message, Method, Scanner, StartLine, Transport,
};

/// The most header fields a generated message has (for the style and
/// order vectors): 3 Via, 2 Route, 1 Record-Route, Max-Forwards, From, To,
/// Call-ID, CSeq, Content-Length and 6 others.
const FIELDS_MAX: usize = 24;

/// The test's case count, unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Small limits, each of which trips on ordinary messages.
fn small_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        1 => Just(tiny()),
        3 => (0usize..4096, 0usize..32, 0usize..512, 0usize..8).prop_map(|(d, h, l, v)| Limits {
            datagram_bytes_max: d,
            headers_max: h,
            header_line_bytes_max: l,
            via_values_max: v,
        }),
    ]
}

fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn flip_case(c: char) -> char {
    if c.is_ascii_uppercase() {
        c.to_ascii_lowercase()
    } else {
        c.to_ascii_uppercase()
    }
}

fn expected_method(text: &str) -> Method {
    match text {
        "INVITE" => Method::Invite,
        "ACK" => Method::Ack,
        "BYE" => Method::Bye,
        "CANCEL" => Method::Cancel,
        "REGISTER" => Method::Register,
        "OPTIONS" => Method::Options,
        "PRACK" => Method::Prack,
        "SUBSCRIBE" => Method::Subscribe,
        "NOTIFY" => Method::Notify,
        "PUBLISH" => Method::Publish,
        "INFO" => Method::Info,
        "REFER" => Method::Refer,
        "MESSAGE" => Method::Message,
        "UPDATE" => Method::Update,
        _ => Method::Other,
    }
}

// ---------------------------------------------------------------------------
// The model of a generated message.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum ParamKind {
    Branch,
    Rport,
    Received,
    Other,
}

/// One Via parameter as written: separator, name (any letter case), value.
#[derive(Clone, Debug)]
struct ViaParam {
    sep: &'static str,
    name: String,
    value: Option<String>,
    kind: ParamKind,
}

impl ViaParam {
    fn render(&self, out: &mut String) {
        out.push_str(self.sep);
        out.push_str(&self.name);
        if let Some(v) = &self.value {
            out.push('=');
            out.push_str(v);
        }
    }
}

#[derive(Clone, Debug)]
struct ViaModel {
    /// `SIP/2.0/` as written, white space and letter case included.
    protocol: &'static str,
    transport: String,
    host: String,
    port: Option<u16>,
    params: Vec<ViaParam>,
}

impl ViaModel {
    fn head(&self) -> String {
        let mut s = format!("{}{} {}", self.protocol, self.transport, self.host);
        if let Some(port) = self.port {
            s.push_str(&format!(":{port}"));
        }
        s
    }

    fn render(&self) -> String {
        let mut s = self.head();
        for p in &self.params {
            p.render(&mut s);
        }
        s
    }

    fn param(&self, kind: ParamKind) -> Option<&ViaParam> {
        self.params.iter().rev().find(|p| p.kind == kind)
    }

    fn branch(&self) -> Option<&str> {
        self.param(ParamKind::Branch)
            .and_then(|p| p.value.as_deref())
    }

    fn received(&self) -> Option<&str> {
        self.param(ParamKind::Received)
            .and_then(|p| p.value.as_deref())
    }

    fn rport(&self) -> Option<Option<u16>> {
        self.param(ParamKind::Rport)
            .map(|p| p.value.as_ref().map(|v| v.parse().unwrap()))
    }

    /// This Via as the proxy must pass it on after receiving it from
    /// `source`. RFC 3261 §18.2.1: `received` is added when the sent-by is
    /// not the packet's source address (an existing one gets the new
    /// value); RFC 3581 §4: a bare `rport` gets the source port, and then
    /// `received` is added whatever the sent-by says.
    fn forwarded(&self, source: SocketAddr) -> String {
        let wants_rport = self.rport() == Some(None);
        let add_received = wants_rport || host_ip(&self.host) != Some(source.ip());
        // The editor rewrites the `received` the scanner reads (the last
        // one) to the packet's source, whatever the sent-by.
        let last_received = self
            .params
            .iter()
            .rposition(|p| matches!(p.kind, ParamKind::Received));
        let mut s = self.head();
        for (i, p) in self.params.iter().enumerate() {
            let mut p = p.clone();
            match p.kind {
                ParamKind::Rport if p.value.is_none() => {
                    p.value = Some(source.port().to_string());
                }
                ParamKind::Received if Some(i) == last_received => {
                    p.value = Some(ip_text(source.ip()));
                }
                _ => {}
            }
            p.render(&mut s);
        }
        if add_received && last_received.is_none() {
            s.push_str(";received=");
            s.push_str(&ip_text(source.ip()));
        }
        s
    }
}

#[derive(Clone, Debug)]
struct UriModel {
    scheme: &'static str,
    user: Option<String>,
    host: String,
    port: Option<u16>,
    params: Vec<&'static str>,
}

impl UriModel {
    fn render(&self) -> String {
        let mut s = format!("{}:", self.scheme);
        if let Some(user) = &self.user {
            s.push_str(user);
            s.push('@');
        }
        s.push_str(&self.host);
        if let Some(port) = self.port {
            s.push_str(&format!(":{port}"));
        }
        for p in &self.params {
            s.push(';');
            s.push_str(p);
        }
        s
    }
}

/// A From or To value.
#[derive(Clone, Debug)]
struct AddrModel {
    display: Option<String>,
    space_before_angle: bool,
    /// `<uri>` rather than a bare addr-spec.
    angle: bool,
    uri: UriModel,
    tag: Option<String>,
    params: Vec<String>,
    tag_first: bool,
}

impl AddrModel {
    fn render(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.display {
            s.push_str(d);
            if self.space_before_angle {
                s.push(' ');
            }
        }
        if self.angle {
            s.push('<');
            s.push_str(&self.uri.render());
            s.push('>');
        } else {
            s.push_str(&self.uri.render());
        }
        let tag = self.tag.iter().map(|t| format!("tag={t}"));
        let params: Vec<String> = if self.tag_first {
            tag.chain(self.params.iter().cloned()).collect()
        } else {
            self.params.iter().cloned().chain(tag).collect()
        };
        for p in params {
            s.push(';');
            s.push_str(&p);
        }
        s
    }
}

#[derive(Clone, Debug)]
struct RouteEntry {
    text: String,
    /// Whether this value names the proxy (sip, 192.0.2.250, port 5060).
    is_us: bool,
}

/// One header field exactly as rendered.
#[derive(Clone, Debug)]
struct Field {
    name: String,
    colon: &'static str,
    value: String,
    /// What the scanner must classify the name as.
    header: HeaderName,
    /// For a Via field with more than one value: the length of the first
    /// value and the separator after it, which `forward_response` removes.
    first_value_cut: Option<usize>,
}

#[derive(Clone, Debug)]
enum Start {
    Request { method: String, uri: UriModel },
    Response { code: u16, reason: String },
}

#[derive(Clone, Debug)]
struct Msg {
    keepalive: &'static str,
    eol: &'static str,
    start: Start,
    /// The header fields in message order.
    fields: Vec<Field>,
    vias: Vec<ViaModel>,
    call_id: String,
    cseq_number: u32,
    cseq_method: String,
    from: AddrModel,
    to: AddrModel,
    max_forwards: Option<u8>,
    routes: Vec<RouteEntry>,
    record_routes: Vec<String>,
    content_length: Option<usize>,
    body: Vec<u8>,
    /// Octets after Content-Length, which are not part of the message.
    trailing: Vec<u8>,
}

impl Msg {
    fn start_line(&self) -> String {
        match &self.start {
            Start::Request { method, uri } => format!("{method} {} SIP/2.0", uri.render()),
            Start::Response { code, reason } if reason.is_empty() => format!("SIP/2.0 {code}"),
            Start::Response { code, reason } => format!("SIP/2.0 {code} {reason}"),
        }
    }

    /// The message alone: start line to the end of the body.
    fn message_bytes(&self) -> Vec<u8> {
        let mut s = self.start_line();
        s.push_str(self.eol);
        for f in &self.fields {
            s.push_str(&f.name);
            s.push_str(f.colon);
            s.push_str(&f.value);
            s.push_str(self.eol);
        }
        s.push_str(self.eol);
        let mut bytes = s.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// The datagram: keep-alives, the message, trailing octets.
    fn datagram(&self) -> Vec<u8> {
        let mut bytes = self.keepalive.as_bytes().to_vec();
        bytes.extend(self.message_bytes());
        bytes.extend_from_slice(&self.trailing);
        bytes
    }

    fn field(&self, header: HeaderName) -> Option<&Field> {
        self.fields.iter().find(|f| f.header == header)
    }
}

// ---------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------

const TOKEN: &str = "[A-Za-z0-9.!%*_+`'~-]";

fn token(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{TOKEN}{{1,{max}}}")).unwrap()
}

fn hostname() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9-]{0,8}(\\.[a-zA-Z][a-zA-Z0-9-]{0,8}){0,3}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        hostname(),
        any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
        any::<u128>().prop_map(|v| format!("[{}]", Ipv6Addr::from(v))),
    ]
}

/// A name in random letter case, sometimes in its compact form.
#[derive(Clone, Debug)]
struct NameStyle {
    compact: bool,
    case_mask: u64,
    colon: &'static str,
}

impl NameStyle {
    fn apply(&self, long: &str, compact: Option<&str>) -> String {
        let base = match (self.compact, compact) {
            (true, Some(c)) => c,
            _ => long,
        };
        base.chars()
            .enumerate()
            .map(|(i, c)| {
                if (self.case_mask >> (i % 64)) & 1 == 1 {
                    flip_case(c)
                } else {
                    c
                }
            })
            .collect()
    }
}

fn name_style() -> impl Strategy<Value = NameStyle> {
    (
        any::<bool>(),
        prop_oneof![2 => Just(0u64), 1 => any::<u64>()],
        select(vec![": ", ":", " : ", "\t:\t", ":   ", ":\t"]),
    )
        .prop_map(|(compact, case_mask, colon)| NameStyle {
            compact,
            case_mask,
            colon,
        })
}

fn via_param(kind: ParamKind, name: &str) -> impl Strategy<Value = (String, &'static str)> {
    let name = name.to_string();
    (any::<u64>(), select(vec![";", ";", " ;", "; ", " ; "])).prop_map(move |(mask, sep)| {
        let style = NameStyle {
            compact: false,
            case_mask: if kind == ParamKind::Branch { 0 } else { mask },
            colon: "",
        };
        (style.apply(&name, None), sep)
    })
}

fn branch_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("z9hG4bK{TOKEN}{{0,16}}")).unwrap(),
        1 => token(10),
    ]
}

fn other_via_param() -> impl Strategy<Value = (String, Option<String>)> {
    prop_oneof![
        (0u16..=255).prop_map(|t| ("ttl".to_string(), Some(t.to_string()))),
        hostname().prop_map(|h| ("maddr".to_string(), Some(h))),
        ("x[a-z0-9]{0,5}", option::of("[a-z0-9.]{1,6}")),
    ]
}

/// A Via value with `branch`, maybe `rport` (bare or with a port), maybe
/// `received`, and other parameters, in random order.
fn via() -> impl Strategy<Value = ViaModel> {
    let branch = (via_param(ParamKind::Branch, "branch"), branch_value());
    let rport = option::of((
        via_param(ParamKind::Rport, "rport"),
        option::of(any::<u16>()),
    ));
    let received = option::of((via_param(ParamKind::Received, "received"), any::<[u8; 4]>()));
    let others = vec((via_param(ParamKind::Other, ""), other_via_param()), 0..3);
    (
        select(vec!["SIP/2.0/", "SIP/2.0/", "sip/2.0/", "SIP / 2.0 / "]),
        prop_oneof![
            select(vec!["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"]).prop_map(String::from),
            "[A-Z]{2,6}",
        ],
        host(),
        option::of(any::<u16>()),
        branch,
        rport,
        received,
        others,
    )
        .prop_flat_map(
            |(protocol, transport, host, port, branch, rport, received, others)| {
                let mut params = vec![ViaParam {
                    sep: (branch.0).1,
                    name: (branch.0).0,
                    value: Some(branch.1),
                    kind: ParamKind::Branch,
                }];
                if let Some(((name, sep), value)) = rport {
                    params.push(ViaParam {
                        sep,
                        name,
                        value: value.map(|p| p.to_string()),
                        kind: ParamKind::Rport,
                    });
                }
                if let Some(((name, sep), ip)) = received {
                    params.push(ViaParam {
                        sep,
                        name,
                        value: Some(Ipv4Addr::from(ip).to_string()),
                        kind: ParamKind::Received,
                    });
                }
                for ((_, sep), (name, value)) in others {
                    params.push(ViaParam {
                        sep,
                        name,
                        value,
                        kind: ParamKind::Other,
                    });
                }
                (
                    Just((protocol, transport, host, port)),
                    Just(params).prop_shuffle(),
                )
            },
        )
        .prop_map(|((protocol, transport, host, port), params)| ViaModel {
            protocol,
            transport,
            host,
            port,
            params,
        })
}

/// A Via that names the proxy, as the top Via of a response to a request
/// it forwarded.
fn our_via() -> impl Strategy<Value = ViaModel> {
    (
        any::<bool>(),
        proptest::string::string_regex(&format!("{TOKEN}{{0,12}}")).unwrap(),
    )
        .prop_map(|(with_port, key)| ViaModel {
            protocol: "SIP/2.0/",
            transport: "UDP".to_string(),
            host: PROXY_HOST.to_string(),
            port: with_port.then_some(PROXY_PORT),
            params: vec![ViaParam {
                sep: ";",
                name: "branch".to_string(),
                value: Some(format!("z9hG4bK{key}")),
                kind: ParamKind::Branch,
            }],
        })
}

fn uri(with_params: bool) -> impl Strategy<Value = UriModel> {
    (
        select(vec!["sip", "sip", "sips", "SIP"]),
        option::of(prop_oneof!["[a-zA-Z0-9_.!~*'+-]{1,12}", "\\+[0-9]{5,12}"]),
        host(),
        option::of(any::<u16>()),
        vec(
            select(vec![
                "lr",
                "transport=udp",
                "user=phone",
                "x-p=1",
                "maddr=10.0.0.1",
            ]),
            0..3,
        ),
    )
        .prop_map(move |(scheme, user, host, port, params)| UriModel {
            scheme,
            user,
            host,
            port,
            params: if with_params { params } else { Vec::new() },
        })
}

fn addr(tag: bool) -> impl Strategy<Value = AddrModel> {
    (
        prop_oneof![
            Just(None),
            "[A-Za-z0-9]{1,8}( [A-Za-z0-9]{1,8}){0,2}".prop_map(Some),
            r#""[ !#-\[\]-~]{0,12}""#.prop_map(Some),
        ],
        any::<bool>(),
        any::<bool>(),
        uri(true),
        if tag {
            token(12).prop_map(Some).boxed()
        } else {
            option::of(token(12)).boxed()
        },
        vec("x[a-z0-9]{0,4}(=[a-z0-9]{1,4})?", 0..2),
        any::<bool>(),
    )
        .prop_map(
            |(display, space_before_angle, angle, mut uri, tag, params, tag_first)| {
                // addr-spec form: no display name, and what follows a `;`
                // is a header parameter, so the URI has none.
                if !angle {
                    uri.params.clear();
                }
                AddrModel {
                    display: if angle { display } else { None },
                    space_before_angle,
                    angle,
                    uri,
                    tag,
                    params,
                    tag_first,
                }
            },
        )
}

fn route_entry(us: bool) -> BoxedStrategy<RouteEntry> {
    if us {
        select(
            &[
                "<sip:192.0.2.250:5060;lr>",
                "<sip:192.0.2.250;lr>",
                "<SIP:192.0.2.250:5060;lr;transport=udp>",
                "\"lb\" <sip:192.0.2.250;lr>",
                "sip:192.0.2.250:5060;lr",
            ][..],
        )
        .prop_map(|t| RouteEntry {
            text: t.to_string(),
            is_us: true,
        })
        .boxed()
    } else {
        prop_oneof![
            hostname().prop_map(|h| format!("<sip:{h};lr>")),
            select(
                &[
                    "<sip:192.0.2.250:5070;lr>",
                    "<sips:192.0.2.250;lr>",
                    "<sip:192.0.2.251;lr>",
                    "<tel:+15551234>",
                    "\"core, east\" <sip:core.example.net;lr>",
                ][..]
            )
            .prop_map(String::from),
        ]
        .prop_map(|text| RouteEntry { text, is_us: false })
        .boxed()
    }
}

fn routes() -> impl Strategy<Value = Vec<RouteEntry>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => (route_entry(true), vec(route_entry(false), 0..3)).prop_map(|(first, mut rest)| {
            rest.insert(0, first);
            rest
        }),
        2 => vec(route_entry(false), 1..4),
    ]
}

/// A header the proxy does not own: an extension name or a known header
/// nothing validates, with a printable value, maybe folded.
#[derive(Clone, Debug)]
struct OtherSpec {
    long: String,
    compact: Option<&'static str>,
    header: HeaderName,
    parts: Vec<String>,
    fold: &'static str,
}

fn other_header() -> impl Strategy<Value = OtherSpec> {
    let known: &'static [(&str, Option<&str>, HeaderName)] = &[
        ("Contact", Some("m"), HeaderName::Contact),
        ("Subject", Some("s"), HeaderName::Subject),
        ("Supported", Some("k"), HeaderName::Supported),
        ("Content-Type", Some("c"), HeaderName::ContentType),
        ("Event", Some("o"), HeaderName::Event),
        ("Require", None, HeaderName::Require),
        ("Unsupported", None, HeaderName::Unsupported),
        ("User-Agent", None, HeaderName::Other),
        ("Allow", None, HeaderName::Other),
    ];
    (
        prop_oneof![
            3 => proptest::string::string_regex(&format!("X-{TOKEN}{{1,12}}"))
                .unwrap()
                .prop_map(|n| (n, None, HeaderName::Other)),
            2 => select(known).prop_map(|(l, c, h)| (l.to_string(), c, h)),
        ],
        prop_oneof![
            1 => Just(Vec::new()),
            6 => vec("[!-~]([ -~]{0,24}[!-~])?", 1..4),
        ],
        select(vec![" ", "\t", "   "]),
    )
        .prop_map(|((long, compact, header), parts, fold)| OtherSpec {
            long,
            compact,
            header,
            parts,
            fold,
        })
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec!["INVITE", "OPTIONS", "REGISTER", "BYE", "MESSAGE", "ACK", "SUBSCRIBE"])
            .prop_map(String::from),
        1 => proptest::string::string_regex(&format!("[A-Za-z]{TOKEN}{{0,10}}")).unwrap(),
    ]
}

/// Everything a message is made of, before it is laid out.
#[derive(Clone, Debug)]
struct Parts {
    keepalive: &'static str,
    eol: &'static str,
    start: Start,
    vias: Vec<ViaModel>,
    via_breaks: Vec<bool>,
    commas: Vec<u8>,
    call_id: String,
    cseq_number: u32,
    cseq_sep: &'static str,
    cseq_method: String,
    from: AddrModel,
    to: AddrModel,
    max_forwards: Option<(u8, usize)>,
    routes: Vec<RouteEntry>,
    route_break: Index,
    record_routes: Vec<String>,
    others: Vec<OtherSpec>,
    content_length: Option<usize>,
    body: Vec<u8>,
    trailing: Vec<u8>,
    styles: Vec<NameStyle>,
    order: Vec<u32>,
}

/// `,` between list values, in one of the ways RFC 3261 allows.
fn comma(choice: u8, eol: &str) -> String {
    match choice % 4 {
        0 => ",".to_string(),
        1 => ", ".to_string(),
        2 => " , ".to_string(),
        _ => format!(",{eol} "),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Request,
    Response,
    /// A response whose top Via is the proxy's and which has at least one
    /// Via below it.
    ResponseToUs,
}

fn parts(kind: Kind) -> impl Strategy<Value = Parts> {
    let start = match kind {
        Kind::Request => (method(), uri(true))
            .prop_map(|(method, uri)| Start::Request { method, uri })
            .boxed(),
        _ => (100u16..=699, prop_oneof!["", "[ -~]{1,20}"])
            .prop_map(|(code, reason)| Start::Response { code, reason })
            .boxed(),
    };
    let vias = match kind {
        Kind::ResponseToUs => (our_via(), vec(via(), 1..4))
            .prop_map(|(ours, mut rest)| {
                rest.insert(0, ours);
                rest
            })
            .boxed(),
        _ => vec(via(), 1..5).boxed(),
    };
    let envelope = (
        select(vec!["", "", "\r\n", "\r\n\r\n"]),
        select(vec!["\r\n", "\r\n", "\r\n", "\n"]),
        start,
        vias,
        vec(any::<bool>(), 3),
        vec(any::<u8>(), 4),
    );
    let dialog = (
        r#"[A-Za-z0-9.!%*_+`'~()<>:\\"/\[\]?{}-]{1,24}(@[a-z0-9.]{1,12})?"#,
        any::<u32>(),
        select(vec![" ", " ", "  ", "\t", " \t "]),
        method(),
        addr(true),
        addr(false),
        option::of((1u8..=255, 0usize..3)),
    );
    let rest = (
        routes(),
        any::<Index>(),
        vec(hostname().prop_map(|h| format!("<sip:{h};lr>")), 0..3),
        vec(other_header(), 0..7),
        prop_oneof![1 => Just(None), 4 => (0usize..3).prop_map(Some)],
        vec(any::<u8>(), 0..96),
        vec(any::<u8>(), 0..8),
        vec(name_style(), FIELDS_MAX),
        vec(any::<u32>(), FIELDS_MAX),
    );
    (envelope, dialog, rest).prop_map(
        move |(
            (keepalive, eol, start, vias, via_breaks, commas),
            (call_id, cseq_number, cseq_sep, cseq_method, from, to, max_forwards),
            (
                routes,
                route_break,
                record_routes,
                others,
                content_length,
                body,
                trailing,
                styles,
                order,
            ),
        )| {
            let cseq_method = match &start {
                Start::Request { method, .. } => method.clone(),
                Start::Response { .. } => cseq_method,
            };
            Parts {
                keepalive,
                eol,
                start,
                vias,
                via_breaks,
                commas,
                call_id,
                cseq_number,
                cseq_sep,
                cseq_method,
                from,
                to,
                max_forwards: max_forwards.filter(|_| kind == Kind::Request),
                routes,
                route_break,
                record_routes,
                others,
                // Without Content-Length the body runs to the end of the
                // datagram, so there can be no trailing octets.
                trailing: if content_length.is_some() {
                    trailing
                } else {
                    Vec::new()
                },
                content_length,
                body,
                styles,
                order,
            }
        },
    )
}

/// Lays the parts out as a message: builds every field, shuffles them,
/// and restores the relative order of the Via fields and of the Route
/// fields (which carry meaning).
fn build(p: Parts) -> Msg {
    let eol = p.eol;
    let mut style = p.styles.iter();
    let mut next_style = || style.next().expect("FIELDS_MAX").clone();
    let field = |name: String, colon, value: String, header| Field {
        name,
        colon,
        value,
        header,
        first_value_cut: None,
    };
    // (class, field): class 0 is Via, 1 is Route, 2 anything else.
    let mut fields: Vec<(u8, Field)> = Vec::new();

    // Via values, split over up to three fields.
    let mut groups: Vec<Vec<usize>> = vec![vec![0]];
    for i in 1..p.vias.len() {
        if p.via_breaks[i - 1] && groups.len() < 3 {
            groups.push(Vec::new());
        }
        groups.last_mut().unwrap().push(i);
    }
    for group in &groups {
        let s = next_style();
        let mut value = String::new();
        let mut cut = None;
        for (n, &i) in group.iter().enumerate() {
            if n > 0 {
                value.push_str(&comma(p.commas[i], eol));
                if n == 1 {
                    cut = Some(value.len());
                }
            }
            value.push_str(&p.vias[i].render());
        }
        let mut f = field(s.apply("Via", Some("v")), s.colon, value, HeaderName::Via);
        // The cut runs from the first value to the start of the second.
        f.first_value_cut = cut;
        fields.push((0, f));
    }

    let s = next_style();
    fields.push((
        2,
        field(
            s.apply("Call-ID", Some("i")),
            s.colon,
            p.call_id.clone(),
            HeaderName::CallId,
        ),
    ));
    let s = next_style();
    fields.push((
        2,
        field(
            s.apply("CSeq", None),
            s.colon,
            format!("{}{}{}", p.cseq_number, p.cseq_sep, p.cseq_method),
            HeaderName::CSeq,
        ),
    ));
    let s = next_style();
    fields.push((
        2,
        field(
            s.apply("From", Some("f")),
            s.colon,
            p.from.render(),
            HeaderName::From,
        ),
    ));
    let s = next_style();
    fields.push((
        2,
        field(
            s.apply("To", Some("t")),
            s.colon,
            p.to.render(),
            HeaderName::To,
        ),
    ));
    if let Some((hops, zeros)) = p.max_forwards {
        let s = next_style();
        let value = format!("{}{hops}", "0".repeat(zeros));
        fields.push((
            2,
            field(
                s.apply("Max-Forwards", None),
                s.colon,
                value,
                HeaderName::MaxForwards,
            ),
        ));
    }
    if !p.routes.is_empty() {
        let split = p.route_break.index(p.routes.len() + 1);
        let (a, b) = p.routes.split_at(split);
        for (n, group) in [a, b].into_iter().filter(|g| !g.is_empty()).enumerate() {
            let s = next_style();
            let value = group
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let sep = if i == 0 {
                        String::new()
                    } else {
                        comma(p.commas[(i + n) % 4], eol)
                    };
                    sep + &r.text
                })
                .collect::<String>();
            fields.push((
                1,
                field(s.apply("Route", None), s.colon, value, HeaderName::Route),
            ));
        }
    }
    if !p.record_routes.is_empty() {
        let s = next_style();
        fields.push((
            2,
            field(
                s.apply("Record-Route", None),
                s.colon,
                p.record_routes.join(", "),
                HeaderName::RecordRoute,
            ),
        ));
    }
    for o in &p.others {
        let s = next_style();
        let fold = format!("{eol}{}", o.fold);
        fields.push((
            2,
            field(
                s.apply(&o.long, o.compact),
                s.colon,
                o.parts.join(&fold),
                o.header,
            ),
        ));
    }
    if let Some(zeros) = p.content_length {
        let s = next_style();
        let value = format!("{}{}", "0".repeat(zeros), p.body.len());
        fields.push((
            2,
            field(
                s.apply("Content-Length", Some("l")),
                s.colon,
                value,
                HeaderName::ContentLength,
            ),
        ));
    }

    let mut index: Vec<usize> = (0..fields.len()).collect();
    index.sort_by_key(|&i| p.order[i]);
    let mut ordered: Vec<(u8, Field)> = index.iter().map(|&i| fields[i].clone()).collect();
    for class in [0, 1] {
        let positions: Vec<usize> = (0..ordered.len())
            .filter(|&i| ordered[i].0 == class)
            .collect();
        let originals = fields.iter().filter(|f| f.0 == class).map(|f| f.1.clone());
        for (at, f) in positions.into_iter().zip(originals) {
            ordered[at].1 = f;
        }
    }

    Msg {
        keepalive: p.keepalive,
        eol,
        start: p.start,
        fields: ordered.into_iter().map(|(_, f)| f).collect(),
        vias: p.vias,
        call_id: p.call_id,
        cseq_number: p.cseq_number,
        cseq_method: p.cseq_method,
        from: p.from,
        to: p.to,
        max_forwards: p.max_forwards.map(|(hops, _)| hops),
        routes: p.routes,
        record_routes: p.record_routes,
        content_length: p.content_length.map(|_| p.body.len()),
        body: p.body,
        trailing: p.trailing,
    }
}

fn msg(kind: Kind) -> impl Strategy<Value = Msg> {
    parts(kind).prop_map(build)
}

/// Where a forwarded request comes from: a random IPv4 or IPv6 address, or
/// the top Via's own address (so that `received` is not needed).
#[derive(Clone, Debug)]
enum SourceChoice {
    V4([u8; 4]),
    V6(u128),
    SentBy,
}

fn source_choice() -> impl Strategy<Value = (SourceChoice, u16)> {
    (
        prop_oneof![
            any::<[u8; 4]>().prop_map(SourceChoice::V4),
            any::<u128>().prop_map(SourceChoice::V6),
            Just(SourceChoice::SentBy),
        ],
        any::<u16>(),
    )
}

fn resolve_source(choice: &(SourceChoice, u16), top_via: &ViaModel) -> SocketAddr {
    let ip = match choice.0 {
        SourceChoice::V4(o) => IpAddr::V4(o.into()),
        SourceChoice::V6(v) => IpAddr::V6(v.into()),
        SourceChoice::SentBy => {
            host_ip(&top_via.host).unwrap_or(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)))
        }
    };
    SocketAddr::new(ip, choice.1)
}

/// A byte that gives SIP its structure, or any byte.
fn noise_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => select(vec![b'\r', b'\n', 0, b':', b',', b';', b'"', b'<', b'>', b' ', b'\t', b'\\', b'@', b'=', b'[']),
        1 => any::<u8>(),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    Insert(Index, u8),
    Replace(Index, u8),
    Delete(Index),
    Truncate(Index),
    /// Copies the line that holds the index right after itself.
    DuplicateLine(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), noise_byte()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        3 => (any::<Index>(), noise_byte()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        2 => any::<Index>().prop_map(Mutation::Delete),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    match *mutation {
        Mutation::Insert(ref i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.insert(at, b);
        }
        _ if bytes.is_empty() => {}
        Mutation::Replace(ref i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        Mutation::Delete(ref i) => {
            bytes.remove(i.index(bytes.len()));
        }
        Mutation::Truncate(ref i) => bytes.truncate(i.index(bytes.len())),
        Mutation::DuplicateLine(ref i) => {
            let at = i.index(bytes.len());
            let start = bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let end = bytes[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |p| at + p + 1);
            let line = bytes[start..end].to_vec();
            bytes.splice(end..end, line);
        }
    }
}

// ---------------------------------------------------------------------------
// Checks shared by the properties and the regression tests (those the fuzz
// targets make as well are in `common`).
// ---------------------------------------------------------------------------

fn route_values(m: &Message<'_>) -> Vec<Vec<u8>> {
    m.routes().map(|r| r.unwrap().value.to_vec()).collect()
}

fn record_route_values(m: &Message<'_>) -> Vec<Vec<u8>> {
    m.record_routes()
        .map(|r| r.unwrap().value.to_vec())
        .collect()
}

/// Scans `datagram` with default limits, with Proxy-Require tags
/// supported, and with `small` limits; checks accessors, forwarding and
/// rejections. Never panics unless a property fails.
fn exercise(datagram: &[u8], reply_sizes: &[usize], small: &Limits) {
    let scanners = [
        (Scanner::new(Limits::default()), true),
        (
            Scanner::new(Limits::default())
                .with_proxy_require_supported(["timer", "100rel", "foo"]),
            true,
        ),
        (Scanner::new(small.clone()), false),
    ];
    common::exercise(datagram, scanners, reply_sizes);
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

fn any_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        3 => msg(Kind::Request),
        1 => msg(Kind::Response),
        1 => msg(Kind::ResponseToUs),
    ]
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn scan_is_total_on_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..2048),
        size in 0usize..512,
        small in small_limits(),
    ) {
        exercise(&bytes, &[size, OUT_BYTES], &small);
    }

    #[test]
    fn scan_is_total_on_mangled_messages(
        m in any_msg(),
        mutations in vec(mutation(), 1..6),
        size in 0usize..512,
        small in small_limits(),
    ) {
        let mut bytes = m.datagram();
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        exercise(&bytes, &[size, OUT_BYTES], &small);
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn request_round_trip(m in msg(Kind::Request)) {
        check_round_trip(&m);
    }

    #[test]
    fn response_round_trip(m in msg(Kind::Response)) {
        check_round_trip(&m);
    }

    #[test]
    fn forward_request_keeps_what_the_editor_does_not_own(
        m in msg(Kind::Request),
        source in source_choice(),
        record_route in any::<bool>(),
        key in proptest::string::string_regex(&format!("{TOKEN}{{0,24}}")).unwrap(),
    ) {
        let source = resolve_source(&source, &m.vias[0]);
        check_forward_request(&m, source, record_route, &key);
    }

    #[test]
    fn forward_response_removes_only_our_via(m in msg(Kind::ResponseToUs)) {
        check_forward_response(&m);
    }

    #[test]
    fn limits_are_exact(m in any_msg()) {
        check_limits(&m);
    }

    #[test]
    fn forward_response_refuses_what_is_not_ours(m in msg(Kind::Response)) {
        check_refusals(&m);
    }
}

/// Each limit accepts a message that reaches it exactly and rejects it
/// one below, with the fault that names it.
fn check_limits(model: &Msg) {
    let datagram = model.datagram();
    let line_end = model.eol.len() - 1;
    let longest = model
        .fields
        .iter()
        .map(|f| f.name.len() + f.colon.len() + f.value.len() + line_end)
        .max()
        .unwrap();
    // A response may carry one Via value past the limit: ours, on top of
    // those of the request it answers.
    let ours = usize::from(matches!(model.start, Start::Response { .. }));
    let exact = Limits {
        datagram_bytes_max: datagram.len(),
        headers_max: model.fields.len(),
        header_line_bytes_max: longest,
        via_values_max: model.vias.len() - ours,
    };
    assert!(Scanner::new(exact.clone()).scan(&datagram).is_ok());
    let below = [
        (
            Limits {
                datagram_bytes_max: datagram.len() - 1,
                ..exact.clone()
            },
            Fault::TooLarge,
        ),
        (
            Limits {
                headers_max: model.fields.len() - 1,
                ..exact.clone()
            },
            Fault::TooManyHeaders,
        ),
        (
            Limits {
                header_line_bytes_max: longest - 1,
                ..exact.clone()
            },
            Fault::HeaderLineTooLong,
        ),
        (
            Limits {
                via_values_max: (model.vias.len() - ours).saturating_sub(1),
                ..exact.clone()
            },
            Fault::TooManyVia,
        ),
    ];
    for (limits, fault) in below {
        // A limit of 0 is not a configuration the scanner accepts
        // (`Limits::check` refuses it, `Scanner::new` raises it to 1).
        if limits.check().is_err() {
            continue;
        }
        let error = Scanner::new(limits.clone()).scan(&datagram).unwrap_err();
        assert_eq!(error.fault, fault, "{limits:?}");
    }
}

/// A response whose top Via is not ours is not ours to forward; one whose
/// only Via is ours answers a request the proxy made itself.
fn check_refusals(model: &Msg) {
    let datagram = model.datagram();
    let mut scanner = Scanner::new(Limits::default());
    let scanned = scanner.scan(&datagram).unwrap();
    let mut out = vec![0u8; OUT_BYTES];
    let top = &model.vias[0];
    let ours = host_ip(&top.host) == Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 250)))
        && top.port.unwrap_or(PROXY_PORT) == PROXY_PORT
        && top.branch().is_some_and(|b| b.starts_with("z9hG4bK"));
    if !ours {
        assert_eq!(
            editor().forward_response(&scanned, &mut out),
            Err(EditError::ViaNotOurs)
        );
    }

    // The same response with our Via as its only one.
    let mut probe = model.clone();
    let first = probe
        .fields
        .iter()
        .position(|f| f.header == HeaderName::Via)
        .unwrap();
    probe.fields[first].value = format!("SIP/2.0/UDP {PROXY_HOST};branch=z9hG4bKprobe");
    let mut index = 0;
    probe.fields.retain(|f| {
        index += 1;
        f.header != HeaderName::Via || index - 1 == first
    });
    let datagram = probe.datagram();
    let scanned = scanner.scan(&datagram).unwrap();
    assert_eq!(
        editor().forward_response(&scanned, &mut out),
        Err(EditError::ViaOnlyOurs)
    );
}

/// A generated message scans back to what was put in.
fn check_round_trip(model: &Msg) {
    let datagram = model.datagram();
    let mut scanner = Scanner::new(Limits::default());
    let m = scanner.scan(&datagram).unwrap_or_else(|e| {
        panic!(
            "generated message rejected: {e}\n{}",
            String::from_utf8_lossy(&datagram)
        )
    });
    check_accessors(&m);
    assert_eq!(m.as_bytes(), &model.message_bytes()[..]);

    match (&model.start, m.start_line()) {
        (
            Start::Request { method, uri },
            StartLine::Request {
                method: got_method,
                method_text,
                uri: got_uri,
                uri_text,
            },
        ) => {
            assert_eq!(*method_text, method.as_bytes());
            assert_eq!(*got_method, expected_method(method));
            assert_eq!(*uri_text, uri.render().as_bytes());
            assert_eq!(got_uri.scheme_name, uri.scheme.as_bytes());
            assert_eq!(got_uri.user, uri.user.as_deref().map(str::as_bytes));
            assert_eq!(got_uri.host, uri.host.as_bytes());
            assert_eq!(got_uri.port, uri.port);
            assert_eq!(got_uri.params, uri.params.join(";").as_bytes());
            assert_eq!(got_uri.lr(), uri.params.contains(&"lr"));
        }
        (Start::Response { code, reason }, StartLine::Response { code: c, reason: r }) => {
            assert_eq!(c, code);
            assert_eq!(*r, reason.as_bytes());
        }
        (want, got) => panic!("start line {want:?} scanned as {got:?}"),
    }

    // The header list: count, order, names as written, values.
    let got: Vec<(Vec<u8>, Vec<u8>, HeaderName)> = m
        .headers()
        .map(|h| (h.name_text.to_vec(), h.value.to_vec(), h.name))
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>, HeaderName)> = model
        .fields
        .iter()
        .map(|f| {
            (
                f.name.clone().into_bytes(),
                f.value.clone().into_bytes(),
                f.header,
            )
        })
        .collect();
    assert_eq!(got, want);

    // Every Via field.
    assert_eq!(m.via_count(), model.vias.len());
    for (got, want) in m.vias().zip(&model.vias) {
        assert_eq!(got.value, want.render().as_bytes());
        assert_eq!(got.transport, want.transport.as_bytes());
        assert_eq!(got.host, want.host.as_bytes());
        assert_eq!(got.port, want.port);
        assert_eq!(got.branch, want.branch().map(str::as_bytes));
        assert_eq!(got.received, want.received().map(str::as_bytes));
        assert_eq!(got.rport, want.rport());
        let rport_name = want.param(ParamKind::Rport).map(|p| p.name.as_bytes());
        assert_eq!(got.rport_name, rport_name);
    }
    assert_eq!(m.top_via().value, model.vias[0].render().as_bytes());

    assert_eq!(m.call_id(), model.call_id.as_bytes());
    assert_eq!(m.cseq().number, model.cseq_number);
    assert_eq!(m.cseq().method_text, model.cseq_method.as_bytes());
    assert_eq!(m.cseq().method, expected_method(&model.cseq_method));
    assert_eq!(m.max_forwards(), model.max_forwards);
    for (got, want) in [(m.from(), &model.from), (m.to(), &model.to)] {
        assert_eq!(got.value, want.render().as_bytes());
        assert_eq!(got.tag, want.tag.as_deref().map(str::as_bytes));
        assert_eq!(got.display_name, want.display.as_deref().map(str::as_bytes));
        let uri = got.uri().unwrap();
        assert_eq!(uri.user, want.uri.user.as_deref().map(str::as_bytes));
        assert_eq!(uri.host, want.uri.host.as_bytes());
        assert_eq!(uri.port, want.uri.port);
    }
    let routes: Vec<Vec<u8>> = model.routes.iter().map(|r| r.text.clone().into()).collect();
    assert_eq!(route_values(&m), routes);
    let record_routes: Vec<Vec<u8>> = model
        .record_routes
        .iter()
        .map(|r| r.clone().into())
        .collect();
    assert_eq!(record_route_values(&m), record_routes);
    assert_eq!(m.content_length(), model.content_length.map(|l| l as u32));
    assert_eq!(m.body(), &model.body[..]);
}

/// If the message says `Max-Forwards: 1`, the forwarded copy says 0 and
/// the scanner (a proxy's) rightly refuses it with 483. To check the rest
/// of it, put the 1 back: the line is `\n`, the name and colon as the model
/// wrote them, `0`, and the model's line end.
fn undo_last_hop(model: &Msg, forwarded: &[u8]) -> Vec<u8> {
    let field = model.field(HeaderName::MaxForwards).unwrap();
    let line = format!("\n{}{}0{}", field.name, field.colon, model.eol).into_bytes();
    let at = forwarded
        .windows(line.len())
        .position(|w| w == line)
        .expect("Max-Forwards: 0 line");
    let mut patched = forwarded.to_vec();
    patched[at + line.len() - model.eol.len() - 1] = b'1';
    patched
}

fn check_forward_request(model: &Msg, source: SocketAddr, record_route: bool, key: &str) {
    let datagram = model.datagram();
    let mut scanner = Scanner::new(Limits::default());
    let input = scanner.scan(&datagram).unwrap();
    let mut out = vec![0u8; OUT_BYTES];
    let forward = Forward {
        source,
        branch_key: key.as_bytes(),
        record_route,
        inbound: Transport::Udp,
        outbound: Transport::Udp,
    };
    let n = editor()
        .forward_request(&input, &forward, &mut out)
        .unwrap();
    let mut output = out[..n].to_vec();
    let mut rescanner = Scanner::new(Limits::default());
    let mut want_hops = model.max_forwards.map_or(70, |h| h - 1);
    if want_hops == 0 {
        let error = rescanner.scan(&output).unwrap_err();
        assert_eq!(error.fault, Fault::MaxForwardsZero);
        output = undo_last_hop(model, &output);
        want_hops = 1;
    }
    let f = rescanner.scan(&output).unwrap_or_else(|e| {
        panic!(
            "forwarded request does not scan: {e}\n{}",
            String::from_utf8_lossy(&output)
        )
    });
    check_accessors(&f);

    // Nothing before the start line, nothing past the body.
    assert_eq!(f.as_bytes().len(), output.len());
    assert_eq!(f.start_line(), input.start_line());
    assert_eq!(unowned_headers(&f), unowned_headers(&input));
    assert_eq!(f.body(), &model.body[..]);
    assert_eq!(f.content_length(), input.content_length());
    assert_eq!(f.max_forwards(), Some(want_hops));

    let vias = via_values(&f);
    assert_eq!(vias.len(), model.vias.len() + 1);
    let ours = format!("SIP/2.0/UDP {PROXY_HOST}:{PROXY_PORT};branch=z9hG4bK{key}");
    assert_eq!(
        String::from_utf8_lossy(&vias[0]),
        ours,
        "our Via goes on top"
    );
    assert_eq!(
        String::from_utf8_lossy(&vias[1]),
        model.vias[0].forwarded(source),
        "the sender's Via gets received/rport (source {source})"
    );
    for (got, want) in vias[2..].iter().zip(&model.vias[1..]) {
        assert_eq!(got, want.render().as_bytes());
    }

    let routes: Vec<Vec<u8>> = model.routes.iter().map(|r| r.text.clone().into()).collect();
    let popped = model.routes.first().is_some_and(|r| r.is_us);
    assert_eq!(
        route_values(&f),
        if popped { &routes[1..] } else { &routes[..] },
        "a first Route naming us is popped, any other is kept"
    );
    let mut record_routes: Vec<Vec<u8>> = model
        .record_routes
        .iter()
        .map(|r| r.clone().into())
        .collect();
    if record_route {
        record_routes.insert(0, format!("<sip:{PROXY_HOST}:{PROXY_PORT};lr>").into());
    }
    assert_eq!(record_route_values(&f), record_routes);
}

fn check_forward_response(model: &Msg) {
    let datagram = model.datagram();
    let mut scanner = Scanner::new(Limits::default());
    let input = scanner.scan(&datagram).unwrap();
    let mut out = vec![0u8; OUT_BYTES];
    let n = editor().forward_response(&input, &mut out).unwrap();
    let output = &out[..n];

    // Byte for byte: the message as generated without its first Via value
    // (and without keep-alives or octets past Content-Length).
    let mut want = model.clone();
    want.vias.remove(0);
    let first = want
        .fields
        .iter()
        .position(|f| f.header == HeaderName::Via)
        .unwrap();
    match want.fields[first].first_value_cut {
        Some(cut) => {
            let value = want.fields[first].value[cut..].to_string();
            want.fields[first].value = value;
        }
        None => {
            want.fields.remove(first);
        }
    }
    assert_eq!(
        String::from_utf8_lossy(output),
        String::from_utf8_lossy(&want.message_bytes()),
    );

    let mut rescanner = Scanner::new(Limits::default());
    let f = rescanner.scan(output).unwrap();
    check_accessors(&f);
    assert_eq!(f.start_line(), input.start_line());
    assert_eq!(unowned_headers(&f), unowned_headers(&input));
    assert_eq!(via_values(&f)[..], via_values(&input)[1..]);
    assert_eq!(route_values(&f), route_values(&input));
    assert_eq!(record_route_values(&f), record_route_values(&input));
    assert_eq!(f.body(), &model.body[..]);
}

// ---------------------------------------------------------------------------
// Fixed cases: seeds of the properties above, and crashes found by fuzzing.
// ---------------------------------------------------------------------------

/// What `fuzz/fuzz_targets/scan.rs` does with one input (`scan_target`),
/// then `exercise` with forwarding, tiny limits and small reply buffers: a
/// crash artifact of that target becomes a regression test by calling this
/// with its bytes (see `fuzz/README.md`).
fn replay_scan_input(data: &[u8]) {
    scan_target(data);
    exercise(data, &[0, 100, OUT_BYTES], &tiny());
}

/// What `fuzz/fuzz_targets/edit.rs` does with one input: the first 8 bytes
/// choose the source address, Record-Route and the branch key exactly as
/// that target decodes them, the rest is the datagram.
fn replay_edit_input(data: &[u8]) {
    edit_target(data);
}

/// What `fuzz/fuzz_targets/proxy.rs` does with one input: the first byte
/// picks the algorithm, then each datagram is a 2-byte length, a source
/// byte and the bytes, all through one `Proxy` (`common::proxy_target`).
fn replay_proxy_input(data: &[u8]) {
    proxy_target(data);
}

fn sip_files(dir: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn torture_and_bench_messages_are_exercised() {
    let files: Vec<_> = ["tests/rfc4475", "benches/messages"]
        .iter()
        .flat_map(|dir| sip_files(dir))
        .filter(|p| p.extension().is_some_and(|e| e == "sip"))
        .collect();
    assert!(files.len() >= 49);
    for path in files {
        replay_scan_input(&std::fs::read(&path).unwrap());
    }
}

/// The committed seed corpus passes every fuzz target's checks on stable,
/// so a change that breaks them shows up in `cargo test` before anyone
/// runs the fuzzer.
#[test]
fn fuzz_seed_corpus_replays() {
    for path in sip_files("fuzz/corpus/scan") {
        replay_scan_input(&std::fs::read(&path).unwrap());
    }
    for path in sip_files("fuzz/corpus/edit") {
        replay_edit_input(&std::fs::read(&path).unwrap());
    }
    let proxy = sip_files("fuzz/corpus/proxy");
    assert!(proxy.len() >= 5, "the proxy seeds are committed");
    for path in proxy {
        replay_proxy_input(&std::fs::read(&path).unwrap());
    }
    let stream = sip_files("fuzz/corpus/stream");
    assert!(stream.len() >= 5, "the stream seeds are committed");
    for path in stream {
        common::stream_target(&std::fs::read(&path).unwrap());
    }
}

/// The `proxy` seed corpus, as `write_proxy_seed_corpus` writes it: sequences built from the bench and
/// RFC 4475 messages. A 180 or 200 from a backend needs the Vias of the
/// request as the proxy forwarded it (our branch is a hash), so each call
/// is run through a `Proxy` to build its answers.
fn proxy_seeds() -> Vec<(String, Vec<u8>)> {
    use sipshard::balance::Algorithm;
    use sipshard::proxy::Outcome;
    use sipshard::testkit::Outbox;
    const CLIENT: u8 = 0;
    const BACKEND_A: u8 = 1;
    const CLIENT_V6: u8 = 3;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read(root.join(path)).unwrap();
    let invite = read("benches/messages/invite.sip");
    let ringing = read("benches/messages/ringing.sip");
    let ok = read("benches/messages/ok.sip");
    let bye_us = read("fuzz/corpus/scan/crafted-bye-us.sip");
    let ok_us = read("fuzz/corpus/scan/crafted-ok-us.sip");
    let lines = |m: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(m)
            .split("\r\n")
            .map(str::to_string)
            .collect()
    };
    // Forwards `request` from `peer` as the target's proxy would; returns the
    // backend's index in PEERS and the answer `response` made to carry the
    // forwarded request's Via lines instead of its own.
    let answer = |algorithm, peer: u8, request: &[u8], response: &[u8]| -> (u8, Vec<u8>) {
        let mut proxy = common::proxy(algorithm);
        let mut outbox = Outbox::default();
        let source = PEERS[usize::from(peer)].parse().unwrap();
        let outcome = proxy.handle(0, source, request, &mut outbox);
        assert_eq!(outcome, Outcome::Forwarded, "the seed request is forwarded");
        let (to, out) = outbox.sent.pop().unwrap();
        let len = out.len();
        let backend = PEERS.iter().position(|p| p.parse() == Ok(to)).unwrap() as u8;
        let vias: Vec<String> = lines(&out[..len])
            .into_iter()
            .take_while(|l| !l.is_empty())
            .filter(|l| l.starts_with("Via:"))
            .collect();
        let mut answer = Vec::new();
        let mut vias_written = false;
        for line in lines(response) {
            if line.starts_with("Via:") {
                if !std::mem::replace(&mut vias_written, true) {
                    answer.push(vias.join("\r\n"));
                }
            } else {
                answer.push(line);
            }
        }
        (backend, answer.join("\r\n").into_bytes())
    };
    let replace = |m: &[u8], from: &str, to: &str| -> Vec<u8> {
        String::from_utf8_lossy(m)
            .replacen(from, to, 1)
            .into_bytes()
    };
    let mut seeds = Vec::new();

    // A call: INVITE from the client, 180 and 200 from the backend it went
    // to, then the ACK and BYE along our Record-Route.
    for (name, algorithm, client) in [
        ("call-round-robin", Algorithm::RoundRobin, CLIENT),
        ("call-call-id-hash-v6", Algorithm::CallIdHash, CLIENT_V6),
    ] {
        let (backend, ringing) = answer(algorithm, client, &invite, &ringing);
        let (_, ok) = answer(algorithm, client, &invite, &ok);
        let ack = replace(&bye_us, "BYE sip:", "ACK sip:");
        let ack = replace(&ack, "CSeq: 2 BYE", "CSeq: 1 ACK");
        let cancel = replace(&invite, "INVITE sip:", "CANCEL sip:");
        let cancel = replace(&cancel, "CSeq: 1 INVITE", "CSeq: 1 CANCEL");
        let datagrams: [(u8, &[u8]); 7] = [
            (client, &invite),
            (backend, &ringing),
            (client, &invite),
            (client, &cancel),
            (backend, &ok),
            (client, &ack),
            (client, &bye_us),
        ];
        let hash = algorithm == Algorithm::CallIdHash;
        seeds.push((name.to_string(), proxy_input(hash, &datagrams)));
    }

    // In-dialog requests along Route: to the Request-URI, to the next Route,
    // to a host name (dropped), and a BYE from the backend to the client.
    let two_routes = replace(
        &bye_us,
        "Route: <sip:192.0.2.250:5060;lr>",
        "Route: <sip:192.0.2.250:5060;lr>, <sip:203.0.113.9:5062;lr;maddr=203.0.113.10>",
    );
    let named = replace(
        &bye_us,
        "192.0.2.40:5060 SIP/2.0",
        "pbx.example.com SIP/2.0",
    );
    let from_backend = replace(
        &bye_us,
        "BYE sip:+15551230001@192.0.2.40:5060",
        "BYE sip:+15557770002@198.51.100.20:5060",
    );
    let datagrams: [(u8, &[u8]); 4] = [
        (CLIENT, &bye_us),
        (CLIENT_V6, &two_routes),
        (CLIENT, &named),
        (BACKEND_A, &from_backend),
    ];
    seeds.push((
        "in-dialog-routes".to_string(),
        proxy_input(false, &datagrams),
    ));

    // Responses: not ours, ours (forwarded), ours only, ours over a name.
    let only_us = replace(
        &ok_us,
        "Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-524287-1---8f2a3c7d9e1b4a60;rport=5060;received=198.51.100.20\r\n",
        "",
    );
    let over_name = replace(
        &ok_us,
        "198.51.100.20:5060;branch=z9hG4bK-524287-1---8f2a3c7d9e1b4a60;rport=5060;received=198.51.100.20",
        "pbx.example.com;branch=z9hG4bK-524287-1---8f2a3c7d9e1b4a60",
    );
    let datagrams: [(u8, &[u8]); 4] = [
        (BACKEND_A, &ok),
        (BACKEND_A, &ok_us),
        (BACKEND_A, &only_us),
        (BACKEND_A, &over_name),
    ];
    seeds.push(("responses".to_string(), proxy_input(true, &datagrams)));

    // Garbage: keep-alives, noise, a truncated INVITE, a request without
    // Via, Max-Forwards 0, and a last length that runs past the end.
    let no_via = replace(
        &invite,
        "Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-524287-1---8f2a3c7d9e1b4a60;rport\r\n",
        "",
    );
    let zero = replace(&invite, "Max-Forwards: 70", "Max-Forwards: 0");
    let datagrams: [(u8, &[u8]); 6] = [
        (CLIENT, b"\r\n\r\n"),
        (BACKEND_A, b"\x00\xff\x16\x03\x01 SIP/2.0 garbage:\n\n"),
        (CLIENT, &invite[..120]),
        (CLIENT, &no_via),
        (CLIENT_V6, &zero),
        (2, b""),
    ];
    let mut garbage = proxy_input(false, &datagrams);
    garbage.extend_from_slice(b"\x20\x00\x00");
    garbage.extend_from_slice(&invite[..200]);
    seeds.push(("garbage".to_string(), garbage));

    // The timed mode: transactions live across records, answered by the
    // backends (`Seed::Answer` answers the n-th latest request the proxy
    // sent), cancelled and ACKed by the caller, and the clock moved by
    // steps; every input ends with two 10-minute steps.
    use common::{timed_proxy_input, Seed, OPTION_CALL_ID_HASH, OPTION_TIMED};
    const MAX_1: u8 = 3 << 2;
    let hops_1 = replace(&invite, "Max-Forwards: 70", "Max-Forwards: 1");
    let invite_2 = replace(
        &replace(&invite, "8f2a3c7d9e1b4a60", "8f2a3c7d9e1b4a61"),
        "3c26700b9b1f4a8e",
        "3c26700b9b1f4a8f",
    );
    let timed: [(&str, u8, Vec<Seed<'_>>); 9] = [
        (
            "timed-call",
            OPTION_TIMED,
            vec![
                Seed::Peer(CLIENT, &invite),
                Seed::Answer(0, 180),
                Seed::Step(1_000),
                Seed::Answer(0, 200),
                Seed::Ack(0),
                Seed::Step(1_000),
                Seed::Peer(CLIENT, &bye_us),
                Seed::Answer(0, 200),
                Seed::Step(40_000),
            ],
        ),
        (
            "timed-cancel",
            OPTION_TIMED,
            vec![
                Seed::Peer(CLIENT, &invite),
                Seed::Answer(0, 180),
                Seed::Cancel(0),
                Seed::Answer(0, 200),
                Seed::Answer(1, 487),
                Seed::Ack(0),
                Seed::Step(40_000),
            ],
        ),
        (
            "timed-failover",
            OPTION_TIMED | OPTION_CALL_ID_HASH,
            vec![
                Seed::Peer(CLIENT_V6, &invite),
                Seed::Answer(0, 503),
                Seed::Answer(0, 486),
                Seed::Ack(0),
                Seed::Step(40_000),
            ],
        ),
        (
            "timed-timeouts",
            OPTION_TIMED,
            vec![
                Seed::Peer(CLIENT, &invite),
                Seed::Step(2_500),
                Seed::Peer(CLIENT, &invite),
                Seed::Peer(CLIENT, &bye_us),
                Seed::Step(40_000),
                Seed::Peer(CLIENT, &invite),
                Seed::LateStep(40_000),
            ],
        ),
        (
            "timed-timer-c",
            OPTION_TIMED,
            vec![
                Seed::Peer(CLIENT, &invite),
                Seed::Answer(0, 180),
                Seed::Step(181_000),
                Seed::Answer(0, 200),
                Seed::Answer(1, 487),
                Seed::Step(40_000),
            ],
        ),
        (
            "timed-overload",
            OPTION_TIMED | MAX_1,
            vec![
                Seed::Peer(CLIENT, &invite),
                Seed::Peer(CLIENT_V6, &invite_2),
                Seed::LateStep(100_000),
                Seed::Peer(CLIENT_V6, &invite_2),
            ],
        ),
        (
            "timed-unreachable",
            OPTION_TIMED,
            vec![
                Seed::Peer(CLIENT, &invite),
                Seed::Unreachable(0),
                Seed::Unreachable(0),
                Seed::Ack(0),
                Seed::Step(40_000),
            ],
        ),
        (
            "timed-max-forwards-1-timer-c",
            OPTION_TIMED,
            vec![
                Seed::Peer(CLIENT, &hops_1),
                Seed::Answer(0, 180),
                Seed::Step(200_000),
            ],
        ),
        (
            "timed-max-forwards-1-486",
            OPTION_TIMED,
            vec![
                Seed::Peer(CLIENT, &hops_1),
                Seed::Answer(0, 486),
                Seed::Answer(0, 486),
            ],
        ),
    ];
    for (name, options, records) in timed {
        seeds.push((name.to_string(), timed_proxy_input(options, &records)));
    }

    // The RFC 4475 torture messages, a dozen per sequence: requests from the
    // clients, responses from a backend.
    let mut torture: Vec<_> = std::fs::read_dir(root.join("tests/rfc4475"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sip"))
        .collect();
    torture.sort();
    for (i, chunk) in torture.chunks(13).enumerate() {
        let messages: Vec<Vec<u8>> = chunk.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let datagrams: Vec<(u8, &[u8])> = messages
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let peer = if m.starts_with(b"SIP/") {
                    BACKEND_A
                } else if j % 2 == 0 {
                    CLIENT
                } else {
                    CLIENT_V6
                };
                (peer, &m[..])
            })
            .collect();
        seeds.push((
            format!("rfc4475-{}", i + 1),
            proxy_input(i % 2 == 1, &datagrams),
        ));
    }
    seeds
}

/// Writes `fuzz/corpus/proxy/` from `proxy_seeds`. The seeds are plain
/// committed files; rerun this after a change that moves our branch hash
/// (the 180 and 200 seeds carry it), with
/// `cargo test --release --test proptest_scan -- --ignored write_proxy_seed_corpus`.
#[test]
#[ignore = "writes the proxy seed corpus"]
fn write_proxy_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/proxy");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in proxy_seeds() {
        std::fs::write(dir.join(format!("{name}.seq")), bytes).unwrap();
    }
}

// Regression tests for bugs these properties found in `src/`.

/// `header_line_bytes_max: usize::MAX`, the natural way to say "no limit",
/// once overflowed `start + header_line_bytes_max + 1` in `frame_field`:
/// debug builds panicked, release builds rejected every message that had a
/// header with `HeaderLineTooLong`.
#[test]
fn unlimited_header_line_length_scans() {
    let limits = Limits {
        header_line_bytes_max: usize::MAX,
        ..Limits::default()
    };
    let request = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
    let mut scanner = Scanner::new(limits);
    let message = scanner.scan(request).expect("a valid request scans");
    assert_eq!(message.call_id(), b"c");
}

/// Header positions are kept as `u16` (`Known`, `top_via_slot`,
/// `max_forwards_slot`). Before `Limits` had ceilings, `headers_max` above
/// 65535 let the index of the 65537th field wrap to the 1st: the scanner
/// read `Max-Forwards` from an `X: 42` filler and the editor decremented
/// the filler. `Scanner::new` now clamps `headers_max` to 65535.
#[test]
fn header_indices_past_u16_are_not_truncated() {
    let mut request = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n"
        .to_vec();
    for _ in 0..65536 {
        request.extend_from_slice(b"X:42\r\n");
    }
    request.extend_from_slice(b"Max-Forwards: 9\r\n\r\n");
    let limits = Limits {
        datagram_bytes_max: 1 << 20,
        headers_max: 70_000,
        ..Limits::default()
    };
    let mut scanner = Scanner::new(limits);
    // Rejecting the configuration or the message would also be right;
    // reading the wrong header is not.
    if let Ok(message) = scanner.scan(&request) {
        assert_eq!(message.max_forwards(), Some(9));
    }
}

/// cargo fuzz run proxy: `find_call_id` returns `None` for a request that
/// the scanner accepts because CRLFs before the start line (RFC 3261 §7.5
/// keep-alives, which `Scanner::frame` skips) are taken for the empty line
/// that ends the header section: it skips exactly one line as the start
/// line, so a second leading line end stops it. The shard then handles the
/// datagram on the shard that received it instead of the Call-ID's owner.
/// Byte 0 picks round robin; `ff ff 00`: the rest of the input, from the
/// client.
#[test]
fn fuzz_proxy_find_call_id_after_leading_crlfs() {
    replay_proxy_input(
        b"\x00\xff\xff\x00\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    );
}

/// cargo fuzz run proxy: a Call-ID whose value starts on a continuation
/// line (`Call-ID:` CRLF SP `c`) scans as `c`, a value with no CR or LF in
/// it, but `find_call_id` looks at the first line only, finds it empty and
/// returns `None`.
#[test]
fn fuzz_proxy_find_call_id_folded_before_value() {
    replay_proxy_input(
        b"\x00\xff\xff\x00OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID:\r\n c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    );
}

/// Every seed, replayed from `proxy_seeds` rather than from the files, so a
/// seed that breaks shows up by name.
#[test]
fn proxy_seeds_replay() {
    for (name, bytes) in proxy_seeds() {
        eprintln!("{name}");
        replay_proxy_input(&bytes);
    }
}

/// proxy target, timed mode (a seed written with it): an INVITE with `Max-Forwards: 1`
/// goes on with 0, which the proxy's rescan refuses, so when Timer C fired
/// no CANCEL could be written and no timer was left: the transactions
/// outlived the final 20 minutes (`check_drained`). Option 2: timed, round
/// robin, 64 transactions; then the INVITE from the client, the backend's
/// 180 (`c0`: answer the latest request sent, code 100 + 0x50), and a
/// 200-second step (`83`: 200 × 1 s).
#[test]
fn fuzz_proxy_timer_c_without_a_cancel_ends() {
    let invite = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
Max-Forwards: 1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
    let mut input = vec![0x02, 0x00, invite.len() as u8, 0x00];
    input.extend_from_slice(invite);
    input.extend_from_slice(b"\x00\x50\xc0\x00\xc8\x83");
    replay_proxy_input(&input);
}

/// proxy target, timed mode (a seed written with it): the same INVITE answered 486 twice;
/// no ACK could be written for the first, and the second was "ACKed
/// again" with an empty datagram (`check_sent`).
#[test]
fn fuzz_proxy_no_empty_ack() {
    let invite = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
Max-Forwards: 1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
    let mut input = vec![0x02, 0x00, invite.len() as u8, 0x00];
    input.extend_from_slice(invite);
    input.extend_from_slice(b"\x01\x82\xc0\x01\x82\xc0");
    replay_proxy_input(&input);
}

/// cargo fuzz run proxy (timed mode, the first `.ci/fuzz` run): a
/// provisional that crosses our CANCEL stopped the CANCEL's 64·T1 wait as
/// if it were Timer B, and Timer C then did nothing on a try already
/// cancelled: with no final from the backend, the transactions stayed for
/// ever. The fuzzer's input (an abandoned try of a `Max-Forwards: 1`
/// INVITE after an ICMP error) is `corpus/proxy/regression-provisional-
/// after-cancel-stops-its-wait`; here the plain case: INVITE, 180
/// (`00 50 c0`), the caller's CANCEL (`e0`), a 183 on the INVITE (`c1`:
/// the CANCEL we sent is now the latest request), 400 s (`01 90 83`).
#[test]
fn fuzz_proxy_provisional_after_our_cancel() {
    let invite = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
    let mut input = vec![0x02, 0x00, invite.len() as u8, 0x00];
    input.extend_from_slice(invite);
    input.extend_from_slice(b"\x00\x50\xc0\x00\x00\xe0\x00\x53\xc1\x01\x90\x83");
    replay_proxy_input(&input);
}
