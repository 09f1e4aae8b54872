//! Where a datagram goes: the relay rule, apart from any socket so that it
//! can be tested on its own.
//!
//! The floor does no SIP work, so it cannot tell which call a backend's
//! reply belongs to. It serves one caller: replies from a backend go to the
//! most recent source that is not a backend, and everything else goes to
//! the backends in turn. A load generator that plays the caller from one
//! address and the backends from theirs sees a relay that behaves like the
//! gateway, at the cost of the kernel's UDP path alone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The caller's address, shared by the relay threads.
///
/// Shared rather than per thread because with `--threads N` the kernel's
/// SO_REUSEPORT hash picks the socket from the source address: the caller's
/// datagrams all reach one thread, while each backend's replies reach
/// whichever thread its address hashes to, one that may never have seen
/// the caller. The generation lets a thread check for a change with one
/// atomic load and take the lock only when the caller has changed, which
/// with one caller happens once.
#[derive(Debug, Default)]
pub struct Caller {
    generation: AtomicU64,
    address: Mutex<Option<SocketAddr>>,
}

impl Caller {
    /// Makes `address` the caller; returns the new generation.
    fn publish(&self, address: SocketAddr) -> u64 {
        let mut guard = self.address.lock().unwrap_or_else(PoisonError::into_inner);
        *guard = Some(address);
        // Under the lock, so that the generation and the address change together.
        self.generation.fetch_add(1, Ordering::Release) + 1
    }

    /// The caller and its generation, read together.
    fn read(&self) -> (Option<SocketAddr>, u64) {
        let guard = self.address.lock().unwrap_or_else(PoisonError::into_inner);
        (*guard, self.generation.load(Ordering::Acquire))
    }
}

/// One thread's relay state: the backends, its own round-robin position
/// and its copy of the shared caller.
#[derive(Debug)]
pub struct Relay {
    backends: Vec<SocketAddr>,
    next: usize,
    shared: Arc<Caller>,
    /// The caller as this thread last saw it, and the generation it had.
    caller: Option<SocketAddr>,
    seen: u64,
}

impl Relay {
    /// A relay over `backends` (at least one), sharing the caller with
    /// the other threads through `shared`.
    pub fn new(backends: Vec<SocketAddr>, shared: Arc<Caller>) -> Relay {
        assert!(!backends.is_empty(), "a relay needs a backend");
        Relay {
            backends,
            next: 0,
            shared,
            caller: None,
            seen: 0,
        }
    }

    /// Where a datagram from `source` goes: the caller if it comes from a
    /// backend (`None` while no caller has been seen: it is dropped), else
    /// the next backend in turn, and `source` becomes the caller.
    pub fn destination(&mut self, source: SocketAddr) -> Option<SocketAddr> {
        if self.backends.contains(&source) {
            if self.shared.generation.load(Ordering::Acquire) != self.seen {
                (self.caller, self.seen) = self.shared.read();
            }
            return self.caller;
        }
        // Publish unless this thread knows `source` is already the caller:
        // with one caller that is every datagram but the first.
        if self.caller != Some(source)
            || self.shared.generation.load(Ordering::Acquire) != self.seen
        {
            self.caller = Some(source);
            self.seen = self.shared.publish(source);
        }
        let backend = self.backends[self.next];
        self.next = (self.next + 1) % self.backends.len();
        Some(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn relay(backends: &[&str], shared: &Arc<Caller>) -> Relay {
        Relay::new(
            backends.iter().map(|b| addr(b)).collect(),
            Arc::clone(shared),
        )
    }

    #[test]
    fn callers_datagrams_go_round_robin() {
        let shared = Arc::new(Caller::default());
        let mut r = relay(&["127.0.0.1:5080", "127.0.0.1:5081"], &shared);
        let caller = addr("127.0.0.1:40000");
        assert_eq!(r.destination(caller), Some(addr("127.0.0.1:5080")));
        assert_eq!(r.destination(caller), Some(addr("127.0.0.1:5081")));
        assert_eq!(r.destination(caller), Some(addr("127.0.0.1:5080")));
    }

    #[test]
    fn backend_reply_before_any_caller_is_dropped() {
        let shared = Arc::new(Caller::default());
        let mut r = relay(&["127.0.0.1:5080"], &shared);
        assert_eq!(r.destination(addr("127.0.0.1:5080")), None);
    }

    #[test]
    fn backend_reply_goes_to_the_most_recent_caller() {
        let shared = Arc::new(Caller::default());
        let mut r = relay(&["127.0.0.1:5080", "127.0.0.1:5081"], &shared);
        r.destination(addr("127.0.0.1:40000"));
        assert_eq!(
            r.destination(addr("127.0.0.1:5081")),
            Some(addr("127.0.0.1:40000"))
        );
        r.destination(addr("127.0.0.1:40001"));
        assert_eq!(
            r.destination(addr("127.0.0.1:5080")),
            Some(addr("127.0.0.1:40001"))
        );
    }

    #[test]
    fn a_backend_is_its_address_and_port() {
        // Same IP as a backend, another port: a caller, not a backend.
        let shared = Arc::new(Caller::default());
        let mut r = relay(&["127.0.0.1:5080"], &shared);
        let caller = addr("127.0.0.1:5082");
        assert_eq!(r.destination(caller), Some(addr("127.0.0.1:5080")));
        assert_eq!(r.destination(addr("127.0.0.1:5080")), Some(caller));
    }

    #[test]
    fn a_thread_that_never_saw_the_caller_still_finds_it() {
        let shared = Arc::new(Caller::default());
        let backends = ["127.0.0.1:5080", "127.0.0.1:5081"];
        let mut first = relay(&backends, &shared);
        let mut second = relay(&backends, &shared);
        first.destination(addr("127.0.0.1:40000"));
        assert_eq!(
            second.destination(addr("127.0.0.1:5081")),
            Some(addr("127.0.0.1:40000"))
        );
        // A new caller seen by the second thread reaches the first.
        second.destination(addr("127.0.0.1:40001"));
        assert_eq!(
            first.destination(addr("127.0.0.1:5080")),
            Some(addr("127.0.0.1:40001"))
        );
        // And the first caller, back on the first thread, is the caller
        // again even though that thread had it already.
        first.destination(addr("127.0.0.1:40000"));
        assert_eq!(
            second.destination(addr("127.0.0.1:5080")),
            Some(addr("127.0.0.1:40000"))
        );
    }

    #[test]
    fn each_thread_keeps_its_own_turn() {
        let shared = Arc::new(Caller::default());
        let backends = ["127.0.0.1:5080", "127.0.0.1:5081"];
        let mut first = relay(&backends, &shared);
        let mut second = relay(&backends, &shared);
        let caller = addr("127.0.0.1:40000");
        assert_eq!(first.destination(caller), Some(addr("127.0.0.1:5080")));
        assert_eq!(second.destination(caller), Some(addr("127.0.0.1:5080")));
    }
}
