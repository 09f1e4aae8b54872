//! The test kit of the proxy core, one for the unit tests, the fuzz
//! targets and the benches: the [`lab`] (a proxy on a virtual clock, fed
//! SIP text), the [`outbox`] of what it sent, [`message`] builders and
//! the virtual [`clock`]. The fuzz targets and benches are crates of their
//! own, so this is compiled always (hidden from the docs) and needs no
//! dev-dependency; nothing on the packet path uses it.

pub mod clock;
pub mod lab;
pub mod message;
pub mod outbox;

pub use lab::{Lab, Setup};
pub use outbox::{Outbox, Sent};

#[cfg(test)]
mod tests;
