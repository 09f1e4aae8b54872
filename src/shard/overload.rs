//! The shard's side of [`crate::proxy::overload`] and
//! [`crate::proxy::shed`]: it measures the load each window, tells the
//! proxy core what share of new calls to admit, and gives the steering
//! program the share of new requests to shed in the kernel.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use super::{steer, sys, Shard};
use crate::proxy::overload::{Load, OverloadConfig};
use crate::proxy::shed::{next_pass_share, Buffer};

/// A shard's share of new requests shed in the kernel (see `steer`), by
/// the policy of [`crate::proxy::shed`].
pub(super) struct KernelShed {
    map: Arc<steer::ShedMap>,
    /// The share of new requests that reaches the shard (1.0: no shedding).
    passed: f64,
    /// The core's `admission_checked` and `shed_dropped` at the window's
    /// start.
    checked: u64,
    dropped: u64,
    /// What the program has shed for this shard, as last read.
    shed: u64,
    /// The listen socket's drop count (`SO_MEMINFO`), as last read.
    socket_drops: u32,
}

impl KernelShed {
    pub(super) fn new(map: Arc<steer::ShedMap>) -> KernelShed {
        KernelShed {
            map,
            passed: 1.0,
            checked: 0,
            dropped: 0,
            shed: 0,
            socket_drops: 0,
        }
    }

    /// What the program has shed for this shard, as last read.
    pub(super) fn shed(&self) -> u64 {
        self.shed
    }

    /// The share to pass in the next window, from what the core saw and
    /// from the listen socket's buffer.
    fn next_share(&self, overloaded: bool, checked: u64, dropped: u64, buffer: Buffer) -> f64 {
        next_pass_share(
            self.passed,
            overloaded,
            checked - self.checked,
            dropped - self.dropped,
            buffer,
        )
    }
}

/// What a shard's overload control is built from: its thresholds, the
/// transaction bound the table's fill is measured against, and the
/// kernel's shed controls when the steering program has a sink.
pub(super) type Overload = (OverloadConfig, usize, Option<Arc<steer::ShedMap>>);

impl Shard {
    /// Once a window: how busy the loop was, how full the transaction
    /// table and the inbox are; tells the proxy when overload starts or
    /// ends.
    pub(super) fn check_overload(&mut self, done: Instant) {
        let (started, busy_then) = self.overload_window;
        let elapsed = done.saturating_duration_since(started);
        let window_ms = self.overload.config().window_ms;
        if elapsed.as_millis() < u128::from(window_ms) {
            return;
        }
        let busy_ns = self.output.counters.busy_ns;
        self.overload_window = (done, busy_ns);
        if elapsed.as_millis() > 10 * u128::from(window_ms) {
            // A stale window (start-up, a long idle wait): nothing was
            // overloading the shard.
            if let Some(admit) = self.overload.idle() {
                let reject_per_s = self.overload.config().reject_per_s;
                let now = self.output.now();
                self.output.proxy.set_admission(admit, reject_per_s, now);
                tracing::info!(shard = self.index, "no longer overloaded (idle)");
            }
            self.update_kernel_shed(None);
            return;
        }
        let inbox = &self.shared.inboxes[self.index];
        // The queue: the fuller of the inbox (handoffs from other shards)
        // and the two sockets' receive buffers (what the kernel holds for
        // us, and drops past).
        let wire = &self.output.wire;
        let [listen, own] = [wire.socket.as_raw_fd(), wire.own_socket.as_raw_fd()]
            .map(|fd| sys::receive_queue(fd).unwrap_or((0.0, 0)));
        let load = Load {
            busy: (busy_ns - busy_then) as f64 / elapsed.as_nanos().max(1) as f64,
            transactions: self.output.proxy.transactions().0 as f64 / self.max_transactions as f64,
            queue: inbox.fill().max(listen.0).max(own.0),
        };
        let was_overloaded = self.overload.overloaded();
        if let Some(admit) = self.overload.observe(load) {
            let reject_per_s = self.overload.config().reject_per_s;
            let now = self.output.now();
            self.output.proxy.set_admission(admit, reject_per_s, now);
            let overloaded = self.overload.overloaded();
            if overloaded == was_overloaded {
                tracing::debug!(
                    shard = self.index,
                    admit,
                    busy = load.busy,
                    transactions = load.transactions,
                    queue = load.queue,
                    "overload: share of new calls admitted"
                );
            } else if overloaded {
                tracing::warn!(
                    shard = self.index,
                    busy = format!("{:.2}", load.busy),
                    transactions = format!("{:.2}", load.transactions),
                    queue = format!("{:.2}", load.queue),
                    "overloaded: some new INVITEs and REGISTERs get 503 until the load falls"
                );
            } else {
                tracing::info!(shard = self.index, "no longer overloaded");
            }
        }
        self.update_kernel_shed(Some(listen));
    }

    /// Gives the kernel the next window's share of new requests to shed
    /// for this shard (see [`KernelShed`]) and reads what it has shed.
    /// `listen`: the listen socket's fill and drop count (`SO_MEMINFO`)
    /// at the end of the window, or `None` for a stale (idle) one.
    pub(super) fn update_kernel_shed(&mut self, listen: Option<(f64, u32)>) {
        let Some(kernel) = &mut self.kernel_shed else {
            return;
        };
        let window = listen.map(|(fill, drops)| {
            let dropped = std::mem::replace(&mut kernel.socket_drops, drops) != drops;
            (fill, dropped)
        });
        let buffer = Buffer::at_window_end(window, self.overload.config().queue_high);
        let counters = self.output.proxy.counters();
        let (checked, dropped) = (counters.admission_checked, counters.shed_dropped);
        let passed = kernel.next_share(self.overload.overloaded(), checked, dropped, buffer);
        (kernel.checked, kernel.dropped) = (checked, dropped);
        let index = self.index as u32;
        if passed != kernel.passed {
            match kernel.map.set(index, 1.0 - passed) {
                Ok(()) => kernel.passed = passed,
                Err(error) => {
                    tracing::debug!(shard = self.index, %error, "could not set the in-kernel shed share")
                }
            }
        }
        if let Ok(shed) = kernel.map.shed(index) {
            kernel.shed = shed;
        }
    }
}
