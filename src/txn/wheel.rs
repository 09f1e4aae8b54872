//! Placeholder timer store with the wheel's API (replaced by the wheel).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
pub struct Full<T>(pub T);

pub struct Wheel<T> {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    entries: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
    cap: usize,
}

impl<T> Wheel<T> {
    pub fn with_capacity(_now: u64, capacity: usize) -> Self {
        Wheel {
            heap: BinaryHeap::new(),
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            cap: capacity,
        }
    }
    pub fn insert(&mut self, deadline: u64, value: T) -> Result<TimerId, Full<T>> {
        if self.len >= self.cap {
            return Err(Full(value));
        }
        self.len += 1;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push((0, None));
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[index as usize];
        e.0 = e.0.wrapping_add(1);
        e.1 = Some(value);
        self.heap.push(Reverse((deadline, index, e.0)));
        Ok(TimerId {
            index,
            generation: e.0,
        })
    }
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let e = self.entries.get_mut(id.index as usize)?;
        if e.0 != id.generation {
            return None;
        }
        let v = e.1.take()?;
        self.len -= 1;
        self.free.push(id.index);
        Some(v)
    }
    pub fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|r| r.0 .0)
    }
    pub fn expire(&mut self, now: u64) -> Option<(TimerId, T)> {
        while let Some(&Reverse((d, i, g))) = self.heap.peek() {
            if d > now {
                return None;
            }
            self.heap.pop();
            let id = TimerId {
                index: i,
                generation: g,
            };
            if let Some(v) = self.cancel(id) {
                return Some((id, v));
            }
        }
        None
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
