//! The outbox: a `Transmit` that keeps every datagram sent, in order,
//! and [`Sent`], one of them read as SIP text.

use std::net::SocketAddr;

use super::message;
use crate::proxy::Transmit;
use crate::sip::{Peer, UDP_PAYLOAD_MAX};

/// A [`Transmit`] that keeps what is sent: each datagram is copied out of
/// its buffer, so a test can read them all after the fact. (The shard's
/// send batch and the pipeline bench's arena copy nothing.)
#[derive(Debug, Default)]
pub struct Outbox {
    buffer: Vec<u8>,
    pub sent: Vec<(Peer, Vec<u8>)>,
}

impl Transmit for Outbox {
    fn buffer(&mut self) -> &mut [u8] {
        self.buffer.resize(UDP_PAYLOAD_MAX, 0);
        &mut self.buffer
    }

    fn send(&mut self, to: Peer, len: usize) {
        self.sent.push((to, self.buffer[..len].to_vec()));
    }
}

impl Outbox {
    /// What was sent since the last call, as text.
    pub fn take(&mut self) -> Vec<Sent> {
        self.sent
            .drain(..)
            .map(|(peer, bytes)| Sent {
                to: peer.addr,
                peer,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            })
            .collect()
    }
}

/// One datagram the proxy sent.
#[derive(Clone, Debug)]
pub struct Sent {
    pub to: SocketAddr,
    /// `to` with its transport and connection.
    pub peer: Peer,
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

    /// What a backend answers to this request: [`message::response`].
    pub fn answer(&self, code: u16, tag: Option<&str>) -> String {
        message::response(&self.text, code, tag)
    }
}
