//! A test bench for the proxy core: a fake clock, an outbox, and SIP text
//! in and out.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Outbox, Outcome, Proxy};
use crate::balance::{Algorithm, Routing, RoutingSpec};
use crate::sip::{Limits, LocalAddress, Scanner};
use crate::txn::{Millis, TxnConfig};

pub const LB: &str = "192.0.2.250";
pub const BACKEND_A: &str = "10.0.0.1:5080";
pub const BACKEND_B: &str = "10.0.0.2:5080";
pub const BACKEND_C: &str = "10.0.0.3:5080";
pub const CALLER: &str = "198.51.100.7:5070";

pub struct Lab {
    pub proxy: Proxy,
    pub now: Millis,
    pub outbox: Outbox,
}

/// One datagram the proxy sent.
#[derive(Clone, Debug)]
pub struct Sent {
    pub to: SocketAddr,
    pub text: String,
}

impl Sent {
    pub fn to(&self) -> String {
        self.to.to_string()
    }

    /// The status code of a response, 0 for a request.
    pub fn code(&self) -> u16 {
        self.text
            .strip_prefix("SIP/2.0 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// The method of a request, "" for a response.
    pub fn method(&self) -> &str {
        match self.text.starts_with("SIP/2.0 ") {
            true => "",
            false => self.text.split(' ').next().unwrap_or(""),
        }
    }

    /// The first line of `name`'s value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.text
            .split("\r\n")
            .find_map(|line| line.strip_prefix(prefix.as_str()))
    }

    /// Our branch, from the top Via.
    pub fn branch(&self) -> String {
        let via = self.header("Via").unwrap_or_default();
        via.split(";branch=")
            .nth(1)
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// What a backend answers to this request: its Vias, From, To with
    /// `tag` (when given), Call-ID and CSeq copied (RFC 3261 §8.2.6.2).
    pub fn answer(&self, code: u16, tag: Option<&str>) -> String {
        let head = self.text.split("\r\n\r\n").next().unwrap_or_default();
        let mut out = format!("SIP/2.0 {code} {}\r\n", reason(code));
        for line in head.split("\r\n").skip(1) {
            let keep = ["Via:", "From:", "Call-ID:", "CSeq:", "Record-Route:"];
            if keep.iter().any(|k| line.starts_with(k)) {
                out.push_str(line);
                out.push_str("\r\n");
            } else if line.starts_with("To:") {
                out.push_str(line);
                if let Some(tag) = tag.filter(|_| !line.contains(";tag=")) {
                    out.push_str(";tag=");
                    out.push_str(tag);
                }
                out.push_str("\r\n");
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        404 => "Not Found",
        486 => "Busy Here",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Whatever",
    }
}

/// One destination set of `backends`, each at weight 1; `None` when
/// there are none.
pub fn one_set(algorithm: Algorithm, backends: &[&str]) -> Option<Arc<Routing>> {
    let backends: Vec<SocketAddr> = backends.iter().map(|b| b.parse().unwrap()).collect();
    let spec = RoutingSpec::one_set(algorithm, &backends);
    Routing::build(&spec, None).ok().map(Arc::new)
}

impl Lab {
    pub fn new(algorithm: Algorithm) -> Lab {
        Lab::with(algorithm, TxnConfig::default(), &[BACKEND_A, BACKEND_B])
    }

    pub fn with(algorithm: Algorithm, config: TxnConfig, backends: &[&str]) -> Lab {
        Lab {
            proxy: Proxy::with_routing(
                Scanner::new(Limits::default()),
                LocalAddress::new(LB, 5060),
                one_set(algorithm, backends),
                config,
                0,
                42,
            ),
            now: 0,
            outbox: Outbox::default(),
        }
    }

    /// Hands the proxy one datagram from `from`.
    pub fn recv(&mut self, from: &str, text: &str) -> Outcome {
        self.proxy.handle(
            self.now,
            from.parse().unwrap(),
            text.as_bytes(),
            &mut self.outbox,
        )
    }

    /// Moves the clock on by `ms`, running every timer due on the way,
    /// one millisecond at a time (as a loop waking for each deadline would).
    pub fn advance(&mut self, ms: Millis) {
        let end = self.now + ms;
        while let Some(deadline) = self.proxy.next_deadline().filter(|&d| d <= end) {
            self.now = self.now.max(deadline);
            self.proxy.on_timers(self.now, &mut self.outbox);
        }
        self.now = end;
    }

    /// What was sent since the last call.
    pub fn take(&mut self) -> Vec<Sent> {
        self.outbox
            .sent
            .drain(..)
            .map(|(to, bytes)| Sent {
                to,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            })
            .collect()
    }

    /// The one datagram sent since the last call.
    pub fn one(&mut self) -> Sent {
        let mut sent = self.take();
        assert_eq!(sent.len(), 1, "expected one datagram: {sent:#?}");
        sent.remove(0)
    }
}

pub fn invite(call_id: &str) -> String {
    request("INVITE", call_id, 1)
}

/// An initial request from the caller, branch from the Call-ID and method.
pub fn request(method: &str, call_id: &str, cseq: u32) -> String {
    format!(
        "{method} sip:+15551230001@{LB} SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bK-{call_id}-{method};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+15551230001@{LB}>\r\n\
From: <sip:alice@example.com>;tag=f1\r\n\
Call-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sip:alice@198.51.100.7:5070>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// The caller's CANCEL of `invite(call_id)`: same branch (RFC 3261 §9.1).
pub fn cancel(call_id: &str) -> String {
    invite(call_id)
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("1 INVITE", "1 CANCEL")
}

/// The caller's ACK for a non-2xx final to `invite(call_id)`: same branch,
/// the response's To.
pub fn ack_for(call_id: &str, response: &Sent) -> String {
    let to = response.header("To").unwrap();
    invite(call_id)
        .replacen("INVITE sip", "ACK sip", 1)
        .replace("1 INVITE", "1 ACK")
        .replace(
            &format!("To: <sip:+15551230001@{LB}>"),
            &format!("To: {to}"),
        )
}
