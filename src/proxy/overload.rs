//! Overload control: when a shard is past what it can carry, it stops
//! admitting new calls, so that the calls it has admitted finish.
//!
//! A shard is overloaded when its event loop is busy nearly all the time,
//! its transaction table is nearly full, or its queues (the handoff inbox,
//! the sockets' receive buffers) are filling. Each window the shard
//! measures them and [`Detector`] moves the share of new calls admitted:
//! down while any signal is over its high mark, up while all are under
//! their low marks, held in between (hysteresis). A new INVITE or REGISTER
//! that is not admitted gets 503 with Retry-After, up to `reject_per_s`
//! answers a second, and is dropped past them. In-dialog requests,
//! responses, ACK and CANCEL always flow.
//!
//! No I/O here: the shard feeds the numbers and the time.

use crate::txn::Millis;

/// The thresholds, from the config's `[overload]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct OverloadConfig {
    pub enabled: bool,
    /// The window the busy fraction is measured over.
    pub window_ms: u64,
    /// Fraction of wall time the event loop spent working.
    pub busy_high: f64,
    pub busy_low: f64,
    /// Fraction of `max_per_shard` server transactions in use.
    pub transactions_high: f64,
    pub transactions_low: f64,
    /// Fraction of the handoff queue in use.
    pub queue_high: f64,
    pub queue_low: f64,
    /// 503 answers a second while overloaded; new requests past them are
    /// dropped (and retransmitted by their callers).
    pub reject_per_s: u32,
    /// Whether the shard may shed new requests in the kernel (the eBPF
    /// steering program and a sink socket) rather than read and drop them.
    pub shed_in_kernel: bool,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        OverloadConfig {
            enabled: true,
            window_ms: 50,
            busy_high: 0.98,
            busy_low: 0.90,
            transactions_high: 0.90,
            transactions_low: 0.80,
            queue_high: 0.70,
            queue_low: 0.30,
            reject_per_s: 2_000,
            shed_in_kernel: true,
        }
    }
}

/// What the shard measured over one window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub busy: f64,
    pub transactions: f64,
    pub queue: f64,
}

/// The share of new calls a shard admits, steered by its load: cut to
/// [`DECREASE`] of itself for every window with a signal over its high
/// mark (multiplicative decrease), raised by [`INCREASE`] for every window
/// with all of them under their low marks (additive increase), held in
/// between.
/// An on/off switch would shed every new call for a window and then admit
/// every one, so the shard would idle half the time while its callers got
/// 503s; a share settles where the load is just under the marks.
#[derive(Debug)]
pub struct Detector {
    config: OverloadConfig,
    admit: f64,
    /// Times the shard went from admitting every new call to fewer.
    pub entered: u64,
}

/// The cut for a window over a high mark, and the rise for one under all
/// the low marks: gentle enough that the share settles rather than swings
/// between all and nothing as the queues fill and drain within a window.
pub const DECREASE: f64 = 0.85;
pub const INCREASE: f64 = 0.05;

/// The least share admitted while overloaded, so the shard still learns
/// when the load falls (a full table sheds everything on its own).
pub const ADMIT_MIN: f64 = 0.02;

impl Detector {
    pub fn new(config: OverloadConfig) -> Detector {
        Detector {
            config,
            admit: 1.0,
            entered: 0,
        }
    }

    pub fn config(&self) -> &OverloadConfig {
        &self.config
    }

    /// Overloaded means admitting fewer than every new call.
    pub fn overloaded(&self) -> bool {
        self.admit < 1.0
    }

    /// The share of new INVITEs and REGISTERs admitted now.
    pub fn admit(&self) -> f64 {
        self.admit
    }

    /// The shard was idle for many windows: nothing is overloading it.
    pub fn idle(&mut self) -> Option<f64> {
        (self.config.enabled && self.admit < 1.0).then(|| {
            self.admit = 1.0;
            1.0
        })
    }

    /// One window's load; returns the new share when it changed.
    pub fn observe(&mut self, load: Load) -> Option<f64> {
        if !self.config.enabled {
            return None;
        }
        let c = &self.config;
        let over = load.busy >= c.busy_high
            || load.transactions >= c.transactions_high
            || load.queue >= c.queue_high;
        let under = load.busy <= c.busy_low
            && load.transactions <= c.transactions_low
            && load.queue <= c.queue_low;
        // Far under every low mark the load has gone, not eased: admit
        // everyone at once rather than turn callers away for a second more.
        let gone = load.busy <= c.busy_low / 2.0
            && load.transactions <= c.transactions_low / 2.0
            && load.queue <= c.queue_low / 2.0;
        let next = if over {
            (self.admit * DECREASE).max(ADMIT_MIN)
        } else if gone {
            1.0
        } else if under {
            (self.admit + INCREASE).min(1.0)
        } else {
            self.admit
        };
        if next == self.admit {
            return None;
        }
        if self.admit >= 1.0 {
            self.entered += 1;
        }
        self.admit = next;
        Some(next)
    }
}

/// How many 503s the proxy may still send this second while overloaded: a
/// token bucket refilled at `reject_per_s`, holding at most one second's.
#[derive(Debug)]
pub struct RejectBudget {
    per_s: u32,
    tokens: u32,
    refilled_ms: Millis,
}

impl RejectBudget {
    pub fn new(per_s: u32, now: Millis) -> RejectBudget {
        RejectBudget {
            per_s,
            tokens: per_s,
            refilled_ms: now,
        }
    }

    /// Takes one answer's worth; false when the budget is spent.
    pub fn take(&mut self, now: Millis) -> bool {
        let elapsed = now.saturating_sub(self.refilled_ms);
        let earned = elapsed.saturating_mul(u64::from(self.per_s)) / 1000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(self.per_s)) as u32;
            // Keep the remainder: advance by what the tokens earned cost.
            self.refilled_ms += earned * 1000 / u64::from(self.per_s.max(1));
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(busy: f64, transactions: f64, queue: f64) -> Load {
        Load {
            busy,
            transactions,
            queue,
        }
    }

    #[test]
    fn any_signal_over_its_high_mark_cuts_the_share_admitted() {
        for over in [
            load(0.99, 0.0, 0.0),
            load(0.0, 0.95, 0.0),
            load(0.0, 0.0, 0.8),
        ] {
            let mut d = Detector::new(OverloadConfig::default());
            assert_eq!(d.observe(load(0.5, 0.5, 0.0)), None);
            assert_eq!(d.observe(over), Some(DECREASE), "{over:?}");
            assert!(d.overloaded());
            assert_eq!(d.observe(over), Some(DECREASE * DECREASE));
            assert_eq!(d.entered, 1);
        }
    }

    #[test]
    fn the_share_holds_between_the_marks_and_comes_back_under_them() {
        let mut d = Detector::new(OverloadConfig::default());
        for _ in 0..1000 {
            d.observe(load(1.0, 0.0, 0.0));
        }
        assert_eq!(d.admit(), ADMIT_MIN);
        // Between the marks: held (hysteresis).
        assert_eq!(d.observe(load(0.95, 0.0, 0.0)), None);
        assert_eq!(d.observe(load(0.5, 0.85, 0.0)), None);
        assert_eq!(d.observe(load(0.5, 0.5, 0.5)), None);
        // Under every low mark: a twentieth more a window, up to all.
        for _ in 0..19 {
            assert!(d.observe(load(0.5, 0.5, 0.05)).is_some());
        }
        assert!(d.overloaded());
        assert_eq!(d.observe(load(0.5, 0.5, 0.05)), Some(1.0));
        assert!(!d.overloaded());
        assert_eq!(d.observe(load(0.5, 0.5, 0.05)), None);
        // Far under every mark: all at once.
        d.observe(load(1.0, 0.0, 0.0));
        assert_eq!(d.observe(load(0.1, 0.1, 0.0)), Some(1.0));
        // So does a long idle spell.
        d.observe(load(1.0, 0.0, 0.0));
        assert_eq!(d.idle(), Some(1.0));
        assert_eq!(d.idle(), None);
        // A second overload counts as a second entry.
        d.observe(load(0.0, 0.0, 0.9));
        assert_eq!(d.entered, 4);
    }

    #[test]
    fn a_disabled_detector_never_enters() {
        let mut d = Detector::new(OverloadConfig {
            enabled: false,
            ..OverloadConfig::default()
        });
        assert_eq!(d.observe(load(1.0, 1.0, 1.0)), None);
        assert!(!d.overloaded());
    }

    #[test]
    fn the_reject_budget_refills_at_its_rate_and_holds_one_second() {
        let mut b = RejectBudget::new(10, 0);
        assert_eq!((0..20).filter(|_| b.take(0)).count(), 10);
        // 250 ms later: 2.5 answers earned, 2 whole ones.
        assert_eq!((0..20).filter(|_| b.take(250)).count(), 2);
        // The half answer is kept: 50 ms more makes 3.
        assert_eq!((0..20).filter(|_| b.take(300)).count(), 1);
        // A long quiet spell fills it to one second's worth, no more.
        assert_eq!((0..50).filter(|_| b.take(60_000)).count(), 10);
        let mut none = RejectBudget::new(0, 0);
        assert!(!none.take(10_000));
    }
}
