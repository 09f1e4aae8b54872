//! The shard's side of [`crate::guard`]: the clock, the log and the
//! published counters around one shard's sans-I/O [`Guard`].
//!
//! A shard holds a `Gate` only when the SIP ACL has a network or flood
//! protection is on; otherwise the receive path pays one branch on
//! `Option::None`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::Routing;
use crate::guard::{BanTable, Guard, GuardConfig, LogBudget, Verdict};

use super::stats::ShardStats;

/// What the shards' gates share: the ban table and the epoch its times
/// count from (one epoch, so that a ban one shard writes ends at the same
/// moment for all).
pub(crate) struct GateShared {
    pub(crate) bans: Arc<BanTable>,
    pub(crate) epoch: Instant,
    pub(crate) config: GuardConfig,
}

impl GateShared {
    pub(crate) fn new(config: GuardConfig, seed: u64) -> GateShared {
        GateShared {
            bans: Arc::new(BanTable::new(seed)),
            epoch: Instant::now(),
            config,
        }
    }

    /// Bans in force now (for `/metrics`).
    pub(crate) fn bans_active(&self) -> usize {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.bans.active(crate::guard::seconds(now_ms))
    }
}

/// Ban lines logged per second per shard, each kind (started, ended);
/// the rest are summed up in one line.
const LOG_LINES_PER_SECOND: u32 = 10;

/// How often a shard looks for bans that ended (to log them) and shard 0
/// sweeps ended bans out of the shared table.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Gate {
    index: usize,
    guard: Guard,
    bans: Arc<BanTable>,
    epoch: Instant,
    /// The last turn's clock and its milliseconds since `epoch`, so that a
    /// turn's datagrams convert it once.
    clock: Instant,
    now_ms: u64,
    housekept: Instant,
    started_log: LogBudget,
    ended_log: LogBudget,
}

impl Gate {
    pub(crate) fn new(index: usize, shards: usize, shared: &GateShared, seed: u64) -> Gate {
        Gate {
            index,
            guard: Guard::new(&shared.config, shards, shared.bans.clone(), seed),
            bans: shared.bans.clone(),
            epoch: shared.epoch,
            clock: shared.epoch,
            now_ms: 0,
            housekept: Instant::now(),
            started_log: LogBudget::new(LOG_LINES_PER_SECOND),
            ended_log: LogBudget::new(LOG_LINES_PER_SECOND),
        }
    }

    fn now_ms(&mut self, clock: Instant) -> u64 {
        if clock != self.clock {
            self.clock = clock;
            self.now_ms = clock.saturating_duration_since(self.epoch).as_millis() as u64;
        }
        self.now_ms
    }

    /// Before any scanning: false drops the datagram (ACL or ban).
    pub(crate) fn screen(&mut self, clock: Instant, source: SocketAddr) -> bool {
        let now_ms = self.now_ms(clock);
        self.guard.screen(now_ms, source.ip()) == Verdict::Admit
    }

    /// On the owner shard: false drops the datagram (its source is over
    /// its request rate, and is banned now).
    pub(crate) fn meter(&mut self, clock: Instant, source: SocketAddr, datagram: &[u8]) -> bool {
        let now_ms = self.now_ms(clock);
        match self.guard.meter(now_ms, source.ip(), datagram) {
            Verdict::Admit => true,
            Verdict::Drop => false,
            Verdict::BanStarted => {
                if self.started_log.allow(now_ms) {
                    tracing::info!(shard = self.index, source = %source.ip(), ban_s = self.guard.ban_s(), "flood: source over its request rate is banned");
                }
                false
            }
        }
    }

    /// The pool members of a new routing are exempt from now on.
    pub(crate) fn set_routing(&mut self, routing: &Routing) {
        let members: Vec<IpAddr> = routing
            .sets()
            .iter()
            .flat_map(|set| set.members.iter().map(|m| m.address.ip()))
            .collect();
        self.guard.set_pool(members);
    }

    /// Publishes the counters; about once a second also logs the bans
    /// that ended and, on shard 0, sweeps them out of the shared table.
    pub(crate) fn publish(&mut self, stats: &ShardStats, now: Instant) {
        stats.set_guard(&self.guard.counters());
        if now.saturating_duration_since(self.housekept) < HOUSEKEEPING_EVERY {
            return;
        }
        self.housekept = now;
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        while let Some(source) = self.guard.ended(now_ms) {
            if self.ended_log.allow(now_ms) {
                tracing::info!(shard = self.index, %source, "flood: ban ended");
            }
        }
        for (budget, what) in [
            (&mut self.started_log, "bans started"),
            (&mut self.ended_log, "bans ended"),
        ] {
            let refused = budget.refused(now_ms);
            if refused > 0 {
                tracing::info!(
                    shard = self.index,
                    count = refused,
                    "flood: {what} beyond those logged"
                );
            }
        }
        if self.index == 0 {
            self.bans.sweep(crate::guard::seconds(now_ms));
        }
    }

    /// For SIGUSR1.
    pub(crate) fn log_counters(&self) {
        let c = self.guard.counters();
        tracing::info!(
            shard = self.index,
            acl_denied = c.acl_denied,
            flood_dropped = c.banned,
            flood_bans_started = c.bans_started,
            flood_sources = c.sources,
            flood_evictions = c.evictions,
            "shard guard"
        );
    }
}
