//! Framing SIP messages out of a byte stream (RFC 3261 §18.3, §7.5): the
//! header section ends at the first empty line, and Content-Length, which
//! a stream transport requires, says where the body ends. Between
//! messages, CRLFs are keep-alives (RFC 5626 §4.4.1): a double CRLF is a
//! ping, a lone CRLF a pong.
//!
//! One [`Deframer`] per connection, with a buffer that starts at 4 KiB on
//! the first bytes, doubles while a message needs it (up to its bound), and
//! is given back while the connection idles: an idle connection holds none. A stream that cannot be
//! framed (no or a bad Content-Length, a header section or message past
//! the bound) faults for good: the connection must close, since nothing
//! after it can be trusted to start a message.

use memchr::memmem;

use super::lex;

/// How large a message and a connection's buffer may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Header section and body together; the datagram bound's default.
    pub message_bytes_max: usize,
    /// The read buffer: room for a whole message and the start of the next.
    pub buffer_bytes_max: usize,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            message_bytes_max: 65_536,
            buffer_bytes_max: 2 * 65_536,
        }
    }
}

/// What comes out of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One whole message, header section and body.
    Message(&'a [u8]),
    /// A double CRLF between messages: answer with a CRLF.
    Ping,
    /// A lone CRLF between messages: the answer to our ping.
    Pong,
}

/// Why a stream can no longer be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFault {
    /// A message without Content-Length (required on streams, §18.3).
    NoContentLength,
    /// A Content-Length that is not a number, or two that differ.
    BadContentLength,
    /// No end of the header section within the message bound.
    HeadersTooLong,
    /// Header section and body past the message bound.
    MessageTooLarge,
    /// Bytes pushed with no room left for them.
    BufferFull,
}

impl StreamFault {
    pub const ALL: [StreamFault; 5] = [
        StreamFault::NoContentLength,
        StreamFault::BadContentLength,
        StreamFault::HeadersTooLong,
        StreamFault::MessageTooLarge,
        StreamFault::BufferFull,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// As it goes in a metric's label.
    pub fn name(self) -> &'static str {
        match self {
            StreamFault::NoContentLength => "no_content_length",
            StreamFault::BadContentLength => "bad_content_length",
            StreamFault::HeadersTooLong => "headers_too_long",
            StreamFault::MessageTooLarge => "message_too_large",
            StreamFault::BufferFull => "buffer_full",
        }
    }
}

/// A connection's framing state: the bytes read and not yet framed.
#[derive(Debug)]
pub struct Deframer {
    limits: StreamLimits,
    /// Grown as needed, released while idle; `buffer[start..end]` holds
    /// what is not framed yet.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the current message already searched for the end of its
    /// header section, so that no byte is searched twice.
    searched: usize,
    /// The current message's length, once its header section was read.
    length: Option<usize>,
    /// Bytes the last frame took, dropped at the next call.
    consumed: usize,
    /// How many bytes of a keep-alive's start (`\r`, `\r\n`, `\r\n\r`)
    /// were taken out of the buffer while the next byte decides what they
    /// are: a peer's lone CRLF then leaves the connection idle
    /// (`partial() == 0`, the buffer releasable), not in a message.
    held: usize,
    fault: Option<StreamFault>,
}

const END_OF_HEADERS: &[u8] = b"\r\n\r\n";
/// Built once: a finder per search would redo its set-up every message.
static HEADERS_END: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(END_OF_HEADERS));
/// A buffer's first size: a typical message and then some.
const BUFFER_BYTES_MIN: usize = 4096;

/// A keep-alive ping (RFC 5626 §4.4.1); its first two bytes are a pong.
const KEEP_ALIVE: &[u8; 4] = b"\r\n\r\n";

impl Deframer {
    pub fn new(limits: StreamLimits) -> Deframer {
        Deframer {
            limits: StreamLimits {
                message_bytes_max: limits.message_bytes_max,
                buffer_bytes_max: limits.buffer_bytes_max.max(limits.message_bytes_max),
            },
            buffer: Vec::new(),
            start: 0,
            end: 0,
            searched: 0,
            length: None,
            consumed: 0,
            held: 0,
            fault: None,
        }
    }

    /// Room to read into (after moving what is kept to the front, and
    /// growing when full); empty when at its bound.
    pub fn space(&mut self) -> &mut [u8] {
        self.take_consumed();
        // Kept bytes move to the front only when room runs short.
        let spare = self.buffer.len() - self.end;
        if self.start > 0 && spare < self.buffer.len() / 4 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let max = self.limits.buffer_bytes_max;
        if self.end == self.buffer.len() && self.buffer.len() < max {
            let grown = (self.buffer.len() * 2).max(BUFFER_BYTES_MIN).min(max);
            self.buffer.resize(grown, 0);
        }
        &mut self.buffer[self.end..]
    }

    /// `n` bytes were written at the front of [`Deframer::space`].
    pub fn filled(&mut self, n: usize) {
        debug_assert!(n <= self.buffer.len() - self.end, "filled past space()");
        self.end = (self.end + n).min(self.buffer.len());
    }

    /// Copies `bytes` in, all or nothing: for tests and for plaintext that
    /// comes out of another layer (TLS).
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), StreamFault> {
        if self.partial() + bytes.len() > self.limits.buffer_bytes_max {
            return Err(StreamFault::BufferFull);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let space = self.space();
            let n = space.len().min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            self.filled(n);
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Bytes read and not framed yet: the start of a message. The start of
    /// a keep-alive is held apart and not counted, so that a connection
    /// whose peer sent a lone CRLF is idle, not slow to send a message.
    pub fn partial(&self) -> usize {
        self.end - self.start - self.consumed
    }

    pub fn fault(&self) -> Option<StreamFault> {
        self.fault
    }

    /// The read buffer's size now (0 while released).
    pub fn buffer_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Gives the buffer back while nothing is pending in it.
    pub fn release(&mut self) {
        if self.partial() == 0 {
            self.take_consumed();
            self.buffer = Vec::new();
            (self.start, self.end) = (0, 0);
        }
    }

    fn take_consumed(&mut self) {
        self.start += std::mem::take(&mut self.consumed);
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// The next frame; `None` until more bytes come. A fault is returned
    /// again on every later call.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, StreamFault>> {
        if let Some(fault) = self.fault {
            return Some(Err(fault));
        }
        self.take_consumed();
        let pending = &self.buffer[self.start..self.end];
        if self.length.is_none() && (self.held > 0 || pending.first() == Some(&b'\r')) {
            return self.keep_alive();
        }
        let length = match self.length {
            Some(length) => length,
            None => match self.header_section() {
                Ok(Some(length)) => length,
                Ok(None) => return None,
                Err(fault) => {
                    self.fault = Some(fault);
                    return Some(Err(fault));
                }
            },
        };
        if self.end - self.start < length {
            return None;
        }
        self.length = None;
        self.searched = 0;
        self.consumed = length;
        Some(Ok(Frame::Message(
            &self.buffer[self.start..self.start + length],
        )))
    }

    /// CRLFs where a message would start: `\r\n\r\n` is a ping, `\r\n` then
    /// anything but CR a pong; anything else after a CR is not SIP. Until
    /// the byte that decides arrives, what came is held (`held`), not
    /// buffered: a lone CRLF at the end is not reported yet, since the
    /// same bytes in one read would be a ping.
    fn keep_alive(&mut self) -> Option<Result<Frame<'_>, StreamFault>> {
        debug_assert!(
            self.held < KEEP_ALIVE.len(),
            "a whole keep-alive is never held"
        );
        let pending = &self.buffer[self.start..self.end];
        let mut window = [0; KEEP_ALIVE.len()];
        window[..self.held].copy_from_slice(&KEEP_ALIVE[..self.held]);
        let taken = pending.len().min(KEEP_ALIVE.len() - self.held);
        window[self.held..self.held + taken].copy_from_slice(&pending[..taken]);
        let (length, frame) = match &window[..self.held + taken] {
            [b'\r', b'\n', b'\r', b'\n'] => (4, Frame::Ping),
            [b'\r', b'\n', b'\r'] | [b'\r', b'\n'] | [b'\r'] => {
                self.held += taken;
                self.consumed = taken;
                return None;
            }
            [b'\r', b'\n', ..] => (2, Frame::Pong),
            _ => {
                self.fault = Some(StreamFault::NoContentLength);
                return Some(Err(StreamFault::NoContentLength));
            }
        };
        // A pong decided by `\r\n\r` and a byte other than LF leaves its
        // third byte, a CR, held.
        let from_held = length.min(self.held);
        self.held -= from_held;
        self.consumed = length - from_held;
        Some(Ok(frame))
    }

    /// Looks for the end of the header section; when found, the whole
    /// message's length from its Content-Length.
    fn header_section(&mut self) -> Result<Option<usize>, StreamFault> {
        let pending = &self.buffer[self.start..self.end];
        // Only the bound's first bytes are searched: a header section that
        // ends past it is too long however the bytes arrived, whole or in
        // pieces, and is never read for its Content-Length.
        let bounded = &pending[..pending.len().min(self.limits.message_bytes_max)];
        let from = self.searched.saturating_sub(END_OF_HEADERS.len() - 1);
        let Some(at) = HEADERS_END.find(&bounded[from..]) else {
            self.searched = bounded.len();
            return match bounded.len() == self.limits.message_bytes_max {
                true => Err(StreamFault::HeadersTooLong),
                false => Ok(None),
            };
        };
        let headers_end = from + at + END_OF_HEADERS.len();
        let body = content_length(&pending[..headers_end])?;
        let length = headers_end
            .checked_add(body)
            .filter(|&l| l <= self.limits.message_bytes_max)
            .ok_or(StreamFault::MessageTooLarge)?;
        self.length = Some(length);
        Ok(Some(length))
    }
}

/// The Content-Length (or `l`) of a header section: required, and every
/// copy of it must agree.
fn content_length(headers: &[u8]) -> Result<usize, StreamFault> {
    let mut found: Option<usize> = None;
    let first_line_end = memchr::memchr(b'\n', headers).map_or(headers.len(), |i| i + 1);
    let mut start = first_line_end;
    for end in memchr::memchr_iter(b'\n', &headers[first_line_end..]).map(|i| i + first_line_end) {
        let line = &headers[start..end];
        start = end + 1;
        // Most lines are told apart by their first byte, unscanned.
        if !matches!(line.first(), Some(b'c' | b'C' | b'l' | b'L')) {
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = line[..colon].trim_ascii_end();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = parse_length(line[colon + 1..].trim_ascii())?;
        if found.is_some_and(|f| f != value) {
            return Err(StreamFault::BadContentLength);
        }
        found = Some(value);
    }
    found.ok_or(StreamFault::NoContentLength)
}

/// As the scanner reads it (`lex::parse_decimal`): digits only, leading
/// zeros allowed, at most `u32::MAX`.
fn parse_length(digits: &[u8]) -> Result<usize, StreamFault> {
    let length = lex::parse_decimal(digits, u32::MAX).ok_or(StreamFault::BadContentLength)?;
    usize::try_from(length).map_err(|_| StreamFault::MessageTooLarge)
}

#[cfg(test)]
mod tests;
