//! Access control and flood protection for the SIP side (issue #7): which
//! sources may send to us at all ([`Acl`]), and which are sending too many
//! requests (token buckets per source, [`Buckets`], and bans every shard
//! shares, [`BanTable`]).
//!
//! Sans-I/O like the core: no socket, no clock, no thread, no log. The
//! shard asks its [`Guard`] twice per datagram, with the time in
//! milliseconds since an epoch all shards share:
//!
//! ```text
//!  datagram ──► Guard::screen(now, source)           before any scanning
//!                 ACL: deny wins, an empty allow list allows all ──► Drop
//!                 banned by any shard (BanTable, one cache line) ──► Drop
//!               find_call_id → owner shard (hand-off)
//!          ──► Guard::meter(now, source, datagram)    on the owner shard
//!                 a response ──► Admit (never limited)
//!                 a request: take a token from the source's bucket
//!                   empty ──► ban in the BanTable ──► Banned (log it) / Drop
//! ```
//!
//! Metering runs on the shard that owns the datagram's Call-ID, whether the
//! kernel steered it there or a shard handed it over: either way a
//! source's requests spread over the shards by Call-ID hash, which is what
//! each bucket's share of the rate assumes (see [`flood`]).
//!
//! **Pool members are exempt.** A datagram from the address of a member of
//! any destination set passes the ACL and is never metered or banned,
//! whatever the lists say: backends' responses, and their requests within
//! dialogs, must flow. The member addresses come from the routing the
//! shard routes by ([`Guard::set_pool`]); the check is made only when a
//! datagram would otherwise be dropped, so it costs nothing in the common
//! case.

pub mod acl;
pub mod bans;
pub mod flood;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

pub use acl::{Acl, AclError, NETWORKS_MAX};
pub use bans::{Ban, BanTable, BAN_S_MAX};
pub use flood::{Buckets, FloodConfig, Take};

/// An address as one integer: IPv6 as is, IPv4 as its IPv4-mapped IPv6
/// form, so that the two ways a dual-stack socket shows an IPv4 peer are
/// one key. 0 (`::`) is never a datagram's source.
pub type Key = u128;

/// The key of an address.
pub fn key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

/// A keyed hash of an address for the tables. Two rounds of the
/// SplitMix64 finaliser, the seed in each: without the seed (random per
/// process) nobody can pick an address that lands on another's slot.
pub(crate) fn hash(key: Key, seed: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let low = mix((key as u64) ^ seed);
    mix(low ^ (key >> 64) as u64 ^ seed.rotate_left(32))
}

/// The guard's settings: the SIP ACL and flood protection. (The admin
/// API's ACL is the control plane's: `config::AdminConfig`.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// Sources SIP datagrams may come from.
    pub sip: Acl,
    pub flood: FloodConfig,
}

impl GuardConfig {
    /// Whether the SIP side has anything to check. When not, the shards
    /// hold no guard at all and a datagram pays one branch.
    pub fn sip_active(&self) -> bool {
        !self.sip.is_empty() || self.flood.enabled
    }
}

/// A shard's guard counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardCounters {
    /// Datagrams dropped by the SIP ACL.
    pub acl_denied: u64,
    /// Datagrams dropped because their source is banned (including the
    /// request that started the ban).
    pub banned: u64,
    /// Bans this shard started.
    pub bans_started: u64,
    /// Sources in this shard's bucket table (a gauge).
    pub sources: u64,
    /// Sources that lost their bucket to another (the table was full).
    pub evictions: u64,
}

/// What to do with a datagram.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Drop it silently (counted).
    Drop,
    /// Drop it: it put its source over its rate and started a ban, which
    /// the shard logs.
    BanStarted,
}

/// Ended-ban records kept for the log; past this the oldest one's end
/// goes unlogged (the ban itself is unaffected).
const ENDINGS_MAX: usize = 1024;

/// One shard's guard.
pub struct Guard {
    acl: Acl,
    /// No network in the SIP ACL (flood protection alone): skip it.
    acl_empty: bool,
    /// `None` when flood protection is off.
    buckets: Option<Buckets>,
    ban_s: u32,
    bans: Arc<BanTable>,
    /// Keys of every pool member's address, sorted.
    pool: Box<[Key]>,
    counters: GuardCounters,
    /// Bans this shard started, oldest first, with the second they end:
    /// all last `ban_s`, so they end in this order.
    endings: VecDeque<(IpAddr, u32)>,
}

impl Guard {
    /// A guard for one of `shards` shards; `bans` is the table they all
    /// share, `seed` keys this shard's bucket table.
    pub fn new(config: &GuardConfig, shards: usize, bans: Arc<BanTable>, seed: u64) -> Guard {
        let flood = &config.flood;
        Guard {
            acl: config.sip.clone(),
            acl_empty: config.sip.is_empty(),
            buckets: flood.enabled.then(|| Buckets::new(flood, shards, seed)),
            ban_s: flood.ban_s.clamp(1, BAN_S_MAX),
            bans,
            pool: Box::new([]),
            counters: GuardCounters::default(),
            endings: VecDeque::with_capacity(ENDINGS_MAX),
        }
    }

    /// The addresses of the pool members (every destination set's), which
    /// are never dropped. Called again after each reload.
    pub fn set_pool(&mut self, members: impl IntoIterator<Item = IpAddr>) {
        let mut pool: Vec<Key> = members.into_iter().map(key).collect();
        pool.sort_unstable();
        pool.dedup();
        self.pool = pool.into();
    }

    fn is_pool_member(&self, key: Key) -> bool {
        self.pool.binary_search(&key).is_ok()
    }

    /// Before any scanning: drops a datagram whose source the ACL refuses
    /// or any shard has banned.
    pub fn screen(&mut self, now_ms: u64, source: IpAddr) -> Verdict {
        let key = key(source);
        if !self.acl_empty && !self.acl.permits(source) && !self.is_pool_member(key) {
            self.counters.acl_denied += 1;
            return Verdict::Drop;
        }
        if self.buckets.is_some()
            && self.bans.is_banned(key, seconds(now_ms))
            && !self.is_pool_member(key)
        {
            self.counters.banned += 1;
            return Verdict::Drop;
        }
        Verdict::Admit
    }

    /// On the shard that owns the datagram: a request takes a token from
    /// its source's bucket, and a source with none left is banned.
    /// Responses are never metered; every other datagram (requests,
    /// keep-alives, garbage) is.
    pub fn meter(&mut self, now_ms: u64, source: IpAddr, datagram: &[u8]) -> Verdict {
        let Some(buckets) = &mut self.buckets else {
            return Verdict::Admit;
        };
        if datagram.starts_with(b"SIP/2.0 ") {
            return Verdict::Admit;
        }
        let key = key(source);
        if buckets.take(key, now_ms) == Take::Taken || self.is_pool_member(key) {
            return Verdict::Admit;
        }
        self.counters.banned += 1;
        let now_s = seconds(now_ms);
        match self.bans.ban(key, now_s, self.ban_s) {
            Ban::Started => {
                self.counters.bans_started += 1;
                if self.endings.len() == ENDINGS_MAX {
                    self.endings.pop_front();
                }
                let until_s = now_s.saturating_add(self.ban_s).saturating_add(1);
                self.endings.push_back((source.to_canonical(), until_s));
                Verdict::BanStarted
            }
            Ban::AlreadyBanned | Ban::Raced => Verdict::Drop,
        }
    }

    /// A ban this shard started that has ended by `now_ms`, oldest first;
    /// `None` when there is none (yet).
    pub fn ended(&mut self, now_ms: u64) -> Option<IpAddr> {
        match self.endings.front() {
            Some(&(source, until_s)) if until_s <= seconds(now_ms) => {
                self.endings.pop_front();
                Some(source)
            }
            _ => None,
        }
    }

    /// The ban length, for the log.
    pub fn ban_s(&self) -> u32 {
        self.ban_s
    }

    pub fn counters(&self) -> GuardCounters {
        let (sources, evictions) = self
            .buckets
            .as_ref()
            .map_or((0, 0), |b| (b.sources(), b.evictions()));
        GuardCounters {
            sources,
            evictions,
            ..self.counters
        }
    }
}

/// The ban table's clock: whole seconds of the shared epoch.
pub fn seconds(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 1000).unwrap_or(u32::MAX)
}

/// At most a number of log lines a second; the rest are counted, for one
/// summary line once their second is over. Bans are few, but a flood from
/// many addresses starts many at once, and the log must not become the
/// flood.
#[derive(Clone, Debug)]
pub struct LogBudget {
    lines_per_second: u32,
    window_ms: u64,
    used: u32,
    /// Refused in the current second.
    refused: u64,
    /// Refused in seconds that are over, not yet reported.
    to_report: u64,
}

impl LogBudget {
    pub fn new(lines_per_second: u32) -> LogBudget {
        LogBudget {
            lines_per_second,
            window_ms: 0,
            used: 0,
            refused: 0,
            to_report: 0,
        }
    }

    /// Whether one more line may be written at `now_ms`.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        self.roll(now_ms);
        if self.used < self.lines_per_second {
            self.used += 1;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    /// Lines refused in seconds now over, since the last call (0: none).
    pub fn refused(&mut self, now_ms: u64) -> u64 {
        self.roll(now_ms);
        std::mem::take(&mut self.to_report)
    }

    fn roll(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.window_ms) >= 1000 {
            self.window_ms = now_ms;
            self.used = 0;
            self.to_report += std::mem::take(&mut self.refused);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SBC: &str = "192.0.2.10";
    const BACKEND: &str = "10.0.0.5";
    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n";
    const OK: &[u8] = b"SIP/2.0 200 OK\r\n";

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn flood(rate: u32, burst: u32, ban_s: u32) -> GuardConfig {
        GuardConfig {
            flood: FloodConfig {
                enabled: true,
                requests_per_second: rate,
                burst,
                ban_s,
                sources_max: 64,
            },
            ..GuardConfig::default()
        }
    }

    fn guard(config: &GuardConfig) -> Guard {
        let mut guard = Guard::new(config, 1, Arc::new(BanTable::new(1)), 2);
        guard.set_pool([ip(BACKEND), ip("2001:db8::5")]);
        guard
    }

    #[test]
    fn keys_fold_ipv4_mapped_addresses_into_ipv4() {
        assert_eq!(key(ip("10.1.2.3")), key(ip("::ffff:10.1.2.3")));
        assert_ne!(key(ip("10.1.2.3")), key(ip("::10.1.2.3")));
        assert_ne!(key(ip("10.1.2.3")), 0);
    }

    #[test]
    fn the_hash_depends_on_the_seed_and_on_both_halves() {
        let a = key(ip("2001:db8::1"));
        assert_ne!(hash(a, 1), hash(a, 2));
        assert_ne!(hash(a, 1), hash(a ^ 1 << 100, 1));
        assert_ne!(hash(a, 1), hash(a ^ 1, 1));
    }

    #[test]
    fn nothing_configured_is_inactive_and_admits_everything() {
        let config = GuardConfig::default();
        assert!(!config.sip_active());
        assert!(!config.flood.enabled, "flood protection is off by default");
        let mut g = guard(&config);
        for _ in 0..10_000 {
            assert_eq!(g.screen(0, ip(SBC)), Verdict::Admit);
            assert_eq!(g.meter(0, ip(SBC), INVITE), Verdict::Admit);
        }
        assert_eq!(g.counters(), GuardCounters::default());
    }

    #[test]
    fn the_acl_drops_before_anything_and_counts() {
        let sip = Acl::new(
            &["192.0.2.0/24".parse().unwrap()],
            &["192.0.2.66".parse().unwrap()],
        )
        .unwrap();
        let config = GuardConfig {
            sip,
            ..GuardConfig::default()
        };
        assert!(config.sip_active());
        let mut g = guard(&config);
        assert_eq!(g.screen(0, ip(SBC)), Verdict::Admit);
        assert_eq!(g.screen(0, ip("192.0.2.66")), Verdict::Drop);
        assert_eq!(g.screen(0, ip("198.51.100.1")), Verdict::Drop);
        assert_eq!(g.counters().acl_denied, 2);
    }

    #[test]
    fn pool_members_pass_an_acl_that_leaves_them_out() {
        let sip = Acl::new(
            &["192.0.2.0/24".parse().unwrap()],
            &["0.0.0.0/0".parse().unwrap()],
        )
        .unwrap();
        let mut g = guard(&GuardConfig {
            sip,
            ..GuardConfig::default()
        });
        assert_eq!(g.screen(0, ip(BACKEND)), Verdict::Admit);
        assert_eq!(g.screen(0, ip("::ffff:10.0.0.5")), Verdict::Admit);
        assert_eq!(g.screen(0, ip("10.0.0.6")), Verdict::Drop);
        // A reload that drops the member drops its exemption.
        g.set_pool([ip("10.0.0.6")]);
        assert_eq!(g.screen(0, ip(BACKEND)), Verdict::Drop);
        assert_eq!(g.screen(0, ip("10.0.0.6")), Verdict::Admit);
    }

    #[test]
    fn a_source_over_its_rate_is_banned_then_let_in_again() {
        let mut g = guard(&flood(10, 5, 2));
        let t0 = 10_500;
        for _ in 0..5 {
            assert_eq!(g.screen(t0, ip(SBC)), Verdict::Admit);
            assert_eq!(g.meter(t0, ip(SBC), INVITE), Verdict::Admit);
        }
        assert_eq!(g.meter(t0, ip(SBC), INVITE), Verdict::BanStarted);
        assert_eq!(g.screen(t0 + 1, ip(SBC)), Verdict::Drop, "banned");
        assert_eq!(
            g.screen(t0 + 1, ip("192.0.2.11")),
            Verdict::Admit,
            "others are not"
        );
        // The ban began in second 10: over at the start of 13.
        assert_eq!(g.screen(12_999, ip(SBC)), Verdict::Drop);
        assert_eq!(g.ended(12_999), None);
        assert_eq!(g.screen(13_000, ip(SBC)), Verdict::Admit);
        assert_eq!(g.ended(13_000), Some(ip(SBC)));
        assert_eq!(g.ended(13_000), None, "reported once");
        // Its bucket refilled meanwhile: the burst again.
        for _ in 0..5 {
            assert_eq!(g.meter(13_000, ip(SBC), INVITE), Verdict::Admit);
        }
        let c = g.counters();
        assert_eq!((c.bans_started, c.banned, c.sources), (1, 3, 1));
    }

    #[test]
    fn responses_and_pool_members_are_never_metered() {
        let mut g = guard(&flood(1, 1, 60));
        for _ in 0..1000 {
            assert_eq!(g.meter(0, ip(SBC), OK), Verdict::Admit);
            assert_eq!(g.meter(0, ip(BACKEND), INVITE), Verdict::Admit);
            assert_eq!(g.meter(0, ip("2001:db8::5"), INVITE), Verdict::Admit);
        }
        assert_eq!(g.counters().bans_started, 0);
        assert_eq!(g.screen(0, ip(BACKEND)), Verdict::Admit);
        // Garbage counts as a request.
        assert_eq!(g.meter(0, ip(SBC), b"\r\n\r\n"), Verdict::Admit);
        assert_eq!(g.meter(0, ip(SBC), b"xyz"), Verdict::BanStarted);
    }

    #[test]
    fn a_ban_by_one_shard_holds_on_every_shard() {
        let config = flood(20, 10, 60);
        let bans = Arc::new(BanTable::new(3));
        let mut shards: Vec<Guard> = (0..2)
            .map(|i| Guard::new(&config, 2, bans.clone(), i))
            .collect();
        // Each shard holds half the burst: 5 requests.
        for _ in 0..5 {
            assert_eq!(shards[0].meter(0, ip(SBC), INVITE), Verdict::Admit);
        }
        assert_eq!(shards[0].meter(0, ip(SBC), INVITE), Verdict::BanStarted);
        assert_eq!(
            shards[1].screen(1, ip(SBC)),
            Verdict::Drop,
            "shard 1 learnt it"
        );
        assert_eq!(shards[1].counters().banned, 1);
        assert_eq!(bans.active(0), 1);
        // Shard 1's own bucket empties: the ban is there already.
        for _ in 0..5 {
            assert_eq!(shards[1].meter(2, ip(SBC), INVITE), Verdict::Admit);
        }
        assert_eq!(shards[1].meter(2, ip(SBC), INVITE), Verdict::Drop);
        assert_eq!(shards[1].counters().bans_started, 0, "one ban, not two");
    }

    #[test]
    fn the_log_budget_allows_a_few_lines_a_second_and_sums_the_rest() {
        let mut budget = LogBudget::new(3);
        let allowed = (0..10).filter(|_| budget.allow(5_000)).count();
        assert_eq!(allowed, 3);
        assert_eq!(budget.refused(5_999), 0, "its second is not over");
        assert_eq!(budget.refused(6_000), 7);
        assert_eq!(budget.refused(6_000), 0, "reported once");
        assert!(budget.allow(6_001));
    }
}
