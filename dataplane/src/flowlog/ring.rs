//! A bounded single-producer single-consumer ring of `Copy` records: the
//! worker writes into a slot allocated at start and moves its tail on; the
//! agent reads behind it and moves the head on. No lock, no allocation, no
//! read-modify-write on either side: each index has one writer, and the other
//! side only loads it (Acquire) to know how far it may go. A full ring refuses
//! the record (the caller counts it), it never waits or overwrites what the
//! reader has not taken.
//!
//! The two ends are separate types that cannot be cloned, so there is one
//! producer and one consumer by construction.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An index on a cache line of its own, so the producer's stores to the tail
/// do not keep pulling the consumer's head away from it (and back).
#[repr(align(64))]
#[derive(Debug, Default)]
struct Padded(AtomicUsize);

struct Ring<T> {
    slots: Box<[UnsafeCell<T>]>,
    /// Capacity - 1 (a power of two less one): a slot is an index & mask.
    mask: usize,
    /// The next slot the consumer reads (written by the consumer only).
    head: Padded,
    /// The next slot the producer writes (written by the producer only).
    tail: Padded,
}

// SAFETY: a slot is written only by the producer, between its load of `head`
// (Acquire: the consumer is done with it) and its store of `tail` (Release),
// and read only by the consumer between its load of `tail` (Acquire) and its
// store of `head` (Release); the two never touch one slot at once. `T: Copy`
// leaves nothing to drop or alias.
unsafe impl<T: Copy + Send> Sync for Ring<T> {}
// SAFETY: as for `Sync` above; the slots own plain `Copy` values.
unsafe impl<T: Copy + Send> Send for Ring<T> {}

/// The writing end (one worker's).
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
}

/// The reading end (the agent's).
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
}

/// A ring of at least `capacity` slots (rounded up to a power of two, at
/// least 2), filled with `fill` once, here: nothing is allocated afterwards.
pub fn ring<T: Copy + Send>(capacity: usize, fill: T) -> (Producer<T>, Consumer<T>) {
    let cap = capacity.max(2).next_power_of_two();
    let ring = Arc::new(Ring {
        slots: (0..cap).map(|_| UnsafeCell::new(fill)).collect(),
        mask: cap - 1,
        head: Padded::default(),
        tail: Padded::default(),
    });
    (Producer { ring: ring.clone() }, Consumer { ring })
}

impl<T: Copy + Send> Producer<T> {
    /// Writes `v` into the next slot; false when the ring is full (the
    /// record is lost, for the caller to count).
    #[inline]
    pub fn push(&mut self, v: T) -> bool {
        let r = &*self.ring;
        let tail = r.tail.0.load(Ordering::Relaxed);
        if tail.wrapping_sub(r.head.0.load(Ordering::Acquire)) > r.mask {
            return false;
        }
        // SAFETY: the slot is between head and head + capacity, which the
        // consumer does not read until the store of `tail` below publishes it.
        unsafe { *r.slots[tail & r.mask].get() = v };
        r.tail.0.store(tail.wrapping_add(1), Ordering::Release);
        true
    }

    /// Records waiting for the consumer (an upper bound while it reads).
    #[inline]
    pub fn len(&self) -> usize {
        let r = &*self.ring;
        r.tail
            .0
            .load(Ordering::Relaxed)
            .wrapping_sub(r.head.0.load(Ordering::Acquire))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }
}

impl<T: Copy + Send> Consumer<T> {
    /// Moves up to `max` records, oldest first, into `out`; returns how many.
    pub fn drain_into(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let r = &*self.ring;
        let head = r.head.0.load(Ordering::Relaxed);
        let tail = r.tail.0.load(Ordering::Acquire);
        let n = tail.wrapping_sub(head).min(max);
        for i in 0..n {
            // SAFETY: slots from head to tail were published by the
            // producer's Release store of `tail`, and it does not write them
            // again until the store of `head` below gives them back.
            out.push(unsafe { *r.slots[head.wrapping_add(i) & r.mask].get() });
        }
        r.head.0.store(head.wrapping_add(n), Ordering::Release);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_refuses_and_gives_back_in_order() {
        let (mut p, mut c) = ring(3, 0u32);
        assert_eq!(p.capacity(), 4, "rounded up to a power of two");
        for i in 1..=4 {
            assert!(p.push(i));
        }
        assert!(!p.push(5), "full: refused, not overwritten");
        assert_eq!(p.len(), 4);
        let mut out = Vec::new();
        assert_eq!(c.drain_into(&mut out, 2), 2);
        assert_eq!(out, [1, 2]);
        assert!(p.push(6) && p.push(7), "room again");
        assert!(!p.push(8));
        assert_eq!(c.drain_into(&mut out, usize::MAX), 4);
        assert_eq!(out, [1, 2, 3, 4, 6, 7]);
        assert!(p.is_empty());
    }

    #[test]
    fn indices_wrap_around_the_word() {
        let (mut p, mut c) = ring(2, 0u64);
        // start both ends just below the wrap of usize
        p.ring.head.0.store(usize::MAX - 1, Ordering::Relaxed);
        p.ring.tail.0.store(usize::MAX - 1, Ordering::Relaxed);
        let mut out = Vec::new();
        for i in 0..10 {
            assert!(p.push(i));
            assert!(p.push(i + 100));
            assert!(!p.push(0), "full across the wrap");
            assert_eq!(c.drain_into(&mut out, usize::MAX), 2);
        }
        assert_eq!(out.len(), 20);
        assert_eq!(out[18..], [9, 109]);
    }

    /// A producer and a consumer on two threads: every record the producer
    /// says it wrote arrives once, in order, and every refusal is one the
    /// consumer never sees.
    #[test]
    fn two_threads_lose_nothing_they_do_not_count() {
        let (mut p, mut c) = ring(64, 0u64);
        const N: u64 = 200_000;
        let writer = std::thread::spawn(move || {
            let mut refused = 0u64;
            let mut written = Vec::new();
            for i in 1..=N {
                if p.push(i) {
                    written.push(i);
                } else {
                    refused += 1;
                }
            }
            (written, refused)
        });
        let mut got = Vec::new();
        loop {
            let before = got.len();
            c.drain_into(&mut got, 16);
            if got.len() == before && writer.is_finished() {
                c.drain_into(&mut got, usize::MAX);
                break;
            }
        }
        let (written, refused) = writer.join().unwrap();
        assert_eq!(got, written);
        assert_eq!(got.len() as u64 + refused, N);
    }
}
