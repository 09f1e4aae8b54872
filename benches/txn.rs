//! Timer wheel benches: the costs the transaction layer pays per timer.
//!
//! - `insert_cancel_100k`: one shard holding 100,000 armed timers (Timer B,
//!   C and F spread over 180 s); each iteration cancels the oldest and arms
//!   a new one, as when transactions complete and new ones start. The
//!   `_scattered` variant cancels timers in a scrambled order instead, so
//!   each cancel touches a cold part of the 100,000-entry slab.
//! - `insert_expire`: Timer E/F: arm a timer 500 ms out, move time 1 ms on
//!   and drain what is due; at steady state one timer fires per iteration,
//!   after one cascade from level 1 (two when it crossed a 4,096 ms block).
//! - `next_deadline`: what the I/O loop asks every turn, with 100,000 armed
//!   timers and with one timer an hour away (the most levels to look at).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sipshard::txn::wheel::{TimerId, Wheel};

const LIVE: usize = 100_000;
const TIMER_C_MS: u64 = 180_000;

/// Deadlines spread over Timer C without a random number crate.
fn spread_ms(i: u64) -> u64 {
    1 + i.wrapping_mul(2_654_435_761) % TIMER_C_MS
}

fn full_wheel() -> (Wheel<u64>, Vec<TimerId>) {
    let mut wheel = Wheel::with_capacity(0, LIVE);
    let ids = (0..LIVE as u64)
        .map(|i| wheel.insert(spread_ms(i), i).unwrap())
        .collect();
    (wheel, ids)
}

fn insert_cancel(c: &mut Criterion) {
    let (mut wheel, mut ids) = full_wheel();
    let mut oldest = 0;
    let mut i = LIVE as u64;
    c.bench_function("wheel/insert_cancel_100k", |b| {
        b.iter(|| {
            black_box(wheel.cancel(ids[oldest]));
            ids[oldest] = wheel.insert(spread_ms(i), i).unwrap();
            oldest = (oldest + 1) % LIVE;
            i += 1;
        })
    });
}

fn insert_cancel_scattered(c: &mut Criterion) {
    let (mut wheel, mut ids) = full_wheel();
    let mut i = LIVE as u64;
    c.bench_function("wheel/insert_cancel_100k_scattered", |b| {
        b.iter(|| {
            let victim = (i.wrapping_mul(2_654_435_761) % LIVE as u64) as usize;
            black_box(wheel.cancel(ids[victim]));
            ids[victim] = wheel.insert(spread_ms(i), i).unwrap();
            i += 1;
        })
    });
}

fn insert_expire(c: &mut Criterion) {
    let mut wheel = Wheel::with_capacity(0, 1_024);
    let mut now = 0;
    c.bench_function("wheel/insert_expire", |b| {
        b.iter(|| {
            now += 1;
            wheel.insert(now + 500, now).unwrap();
            while let Some(fired) = wheel.expire(now) {
                black_box(fired);
            }
        })
    });
}

fn next_deadline(c: &mut Criterion) {
    let (wheel, _) = full_wheel();
    c.bench_function("wheel/next_deadline_100k", |b| {
        b.iter(|| black_box(&wheel).next_deadline())
    });
    let mut wheel = Wheel::with_capacity(0, 1);
    wheel.insert(3_600_000, 0).unwrap();
    c.bench_function("wheel/next_deadline_one_far", |b| {
        b.iter(|| black_box(&wheel).next_deadline())
    });
}

criterion_group!(
    benches,
    insert_cancel,
    insert_cancel_scattered,
    insert_expire,
    next_deadline
);
criterion_main!(benches);
