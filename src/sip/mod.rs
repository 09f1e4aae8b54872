//! SIP messages: scanning, validation, editing and local responses.
//!
//! Nothing here does I/O or reads a clock: bytes in, views and bytes out.

mod addr;
mod block;
mod call_id;
mod edit;
mod error;
mod header;
pub(crate) mod lex;
mod method;
mod out;
mod params;
mod response;
mod scan;
pub mod stream;
mod transport;
mod uri;
mod via;

pub use addr::{AddrError, NameAddr};
pub use call_id::find_call_id;
pub use edit::{EditError, Editor, Forward, HopMethod, LocalAddress, Source};
pub use error::{Answer, Fault, ScanError, StartKind};
pub use header::HeaderName;
pub use method::Method;
pub use out::BufferFull;
pub use params::{Param, ParamError};
pub use response::{local_to_tag, write_rejection, write_response, LocalResponse, ResponseError};
pub use scan::{CSeq, Contact, Header, LimitError, Limits, Message, Scanner, StartLine};
pub use stream::{Deframer, Frame, StreamFault, StreamLimits};
pub use transport::{FlowId, Peer, PeerError, Transport};
pub use uri::{host_ip, Scheme, Uri, UriError};
pub use via::{Via, ViaError, MAGIC_COOKIE};

/// The largest payload one UDP datagram carries over IPv4 (65,535 less the
/// IP and UDP headers; IPv6 allows 20 bytes more). What the proxy writes
/// must fit in it: the kernel refuses anything larger, so a request that
/// grows past it when forwarded is answered 513 instead.
pub const UDP_PAYLOAD_MAX: usize = 65_507;
