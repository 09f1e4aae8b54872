//! The transaction layer (RFC 3261 §17): for now, the timer wheel its
//! timers will run on.

pub mod wheel;
