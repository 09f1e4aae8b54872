//! Destination sets and balancing (issue #5): which set an initial
//! request goes to, and which member of it.
//!
//! Sans-I/O like the rest of the core: no socket, no clock, no thread.
//! The control thread builds a [`Routing`] snapshot from the configuration
//! and swaps it on reload; each shard holds a [`Selector`] for its own
//! round-robin state; [`MemberHealth`] is the only state shared between
//! them (relaxed atomics: state, active dialogs, latency). [`probe`] is
//! the health prober that moves members between states; the control
//! thread runs it on a socket of its own.
//!
//! ```text
//!  initial request ──► Routing::pick_set(method, ruri user, ruri host, source) ──► SetId
//!                      Selector::select(routing, set, keys, tried, new_dialog)
//!                        ├─ Member(i) ──► routing.set(set).members[i].address
//!                        ├─ AllDown   ──► 503 + Retry-After, at once
//!                        └─ Exhausted ──► the best final response so far
//! ```

mod health;
pub mod probe;
mod routing;
mod select;

pub use health::{ActiveDialog, MemberHealth, State};
pub use probe::ProbeConfig;
pub use routing::{
    Cidr, CidrError, DestinationSet, Member, MemberSpec, Routing, RoutingError, RoutingSpec, Rule,
    RuleSpec, SetId, SetSpec, MEMBERS_MAX, RULES_MAX, SETS_MAX, WEIGHT_MAX,
};
pub use select::{Keys, Selection, Selector};

#[cfg(test)]
mod tests;

/// How a set spreads requests over its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Rendezvous hash of the Call-ID: every request of a call, and its
    /// retries, to the same member.
    CallIdHash,
    /// Rendezvous hash of the From user: one caller's calls together.
    FromUserHash,
    /// Rendezvous hash of the Request-URI user: one callee's (or one
    /// registering user's) requests together.
    RuriUserHash,
    /// Each member in turn.
    RoundRobin,
    /// In turn, in proportion to weight, interleaved (smooth).
    WeightedRoundRobin,
    /// The lowest priority value among the members that can take it,
    /// weighted round robin among equals: primaries, then standbys.
    Priority,
    /// Fewest active dialogs per unit of weight.
    LeastCalls,
    /// Smallest smoothed round trip; unmeasured members first.
    LowestLatency,
}

impl Algorithm {
    /// Every algorithm, as the configuration names it.
    pub const NAMES: [&'static str; 8] = [
        "call-id-hash",
        "from-user-hash",
        "ruri-user-hash",
        "round-robin",
        "weighted-round-robin",
        "priority",
        "least-calls",
        "lowest-latency",
    ];
    const ALL: [Algorithm; 8] = [
        Algorithm::CallIdHash,
        Algorithm::FromUserHash,
        Algorithm::RuriUserHash,
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::Priority,
        Algorithm::LeastCalls,
        Algorithm::LowestLatency,
    ];

    pub fn name(self) -> &'static str {
        Algorithm::NAMES[self as usize]
    }

    /// The algorithm a configuration name stands for.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        let index = Algorithm::NAMES.iter().position(|n| *n == name)?;
        Some(Algorithm::ALL[index])
    }
}
