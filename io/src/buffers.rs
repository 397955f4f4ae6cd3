//! The byte buffers connections borrow, shared by every connection of a
//! thread (a shard), so an idle connection holds none.
//!
//! Two kinds:
//! - **The scratch**: one [`READ_CHUNK_BYTES`] buffer per thread that
//!   every read goes into ([`with_scratch`]). It is borrowed only for the
//!   length of one `poll_read`, never across an `.await` (a stream cannot
//!   keep the slice it is handed), so the connections of a thread take
//!   turns on it. A connection waiting for its next request waits with no
//!   buffer at all; only the bytes it must keep (a request read so far,
//!   pipelined requests behind it) are copied into a buffer of its own.
//! - **The pool**: byte vectors a connection takes ([`take`]) while it
//!   has something to keep (a partial request, a body being decoded, an
//!   answer being built and written) and gives back ([`give`]) as soon as
//!   it has not: after the answer is written and before a call that may be
//!   held (a long-poll). A given-back vector keeps its capacity for the
//!   next connection, so the usual request costs no allocation and no
//!   regrowth; one larger than [`BUFFER_RETAIN_BYTES`] (after a big
//!   request) is freed instead, and at most [`POOL_BUFFERS_MAX`] are kept.
//!
//! Invariant: a pooled vector is empty and at most [`BUFFER_RETAIN_BYTES`]
//! of capacity, so the pool never holds more than
//! `POOL_BUFFERS_MAX * BUFFER_RETAIN_BYTES` bytes per thread, whatever
//! the connections did.

use std::cell::{Cell, RefCell};

use crate::limits::{BUFFER_RETAIN_BYTES, POOL_BUFFERS_MAX, READ_CHUNK_BYTES};

thread_local! {
    /// This thread's read scratch (allocated at its first read).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// This thread's pool of empty vectors.
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Vectors taken from this thread's pool and not given back (held by
    /// connections or dropped with them).
    static LENT: Cell<usize> = const { Cell::new(0) };
}

/// Runs `read` on this thread's scratch buffer ([`READ_CHUNK_BYTES`]).
/// `read` must not wait: it is called inside one poll.
pub fn with_scratch<T>(read: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.is_empty() {
            scratch.resize(READ_CHUNK_BYTES, 0);
        }
        read(&mut scratch)
    })
}

/// A connection's claim on one pooled vector: nothing while it has
/// nothing to keep, a vector from the thread's pool while it has. Dropping
/// it gives the vector back, so a connection that ends anywhere (its task
/// dropped mid-request too) leaves the pool's count right.
#[derive(Debug, Default)]
pub struct Buf(Option<Vec<u8>>);

impl Buf {
    /// A claim on nothing yet.
    pub const fn new() -> Buf {
        Buf(None)
    }

    /// The bytes held (none when nothing is held).
    pub fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }

    /// The vector to fill, taken from the pool first if none is held.
    pub fn vec(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(take)
    }

    /// Whether a vector is held.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// The capacity held, in bytes.
    pub fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, Vec::capacity)
    }

    /// Gives the vector back to the pool, whatever it holds.
    pub fn release(&mut self) {
        if let Some(buf) = self.0.take() {
            give(buf);
        }
    }

    /// Gives the vector back if it holds no bytes.
    pub fn release_if_empty(&mut self) {
        if self.bytes().is_empty() {
            self.release();
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.release();
    }
}

/// An empty vector from this thread's pool (with the capacity an earlier
/// user grew it to), or a new one without capacity.
fn take() -> Vec<u8> {
    LENT.with(|lent| lent.set(lent.get() + 1));
    POOL.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_default()
}

/// Gives `buf` back to this thread's pool: cleared, and kept unless it
/// grew past [`BUFFER_RETAIN_BYTES`] or the pool is full (then freed).
/// A vector without capacity (never used) is not worth keeping.
fn give(mut buf: Vec<u8>) {
    LENT.with(|lent| lent.set(lent.get().saturating_sub(1)));
    if buf.capacity() == 0 || buf.capacity() > BUFFER_RETAIN_BYTES {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_BUFFERS_MAX {
            buf.clear();
            pool.push(buf);
        }
    });
}

/// What this thread's buffers hold now, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Vectors held by [`Buf`]s now (taken and not given back).
    pub lent: usize,
    /// Vectors in the pool.
    pub pooled: usize,
    /// Their capacity, in bytes.
    pub pooled_bytes: usize,
}

/// This thread's [`BufferStats`].
pub fn stats() -> BufferStats {
    let (pooled, pooled_bytes) = POOL.with(|pool| {
        let pool = pool.borrow();
        (pool.len(), pool.iter().map(Vec::capacity).sum())
    });
    BufferStats {
        lent: LENT.with(Cell::get),
        pooled,
        pooled_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_buffer_is_reused_and_a_big_one_freed() {
        let mut small = Buf::new();
        assert_eq!(stats().lent, 0);
        small.vec().extend_from_slice(&[1; 100]);
        assert_eq!(stats().lent, 1);
        let capacity = small.capacity();
        small.release();
        assert_eq!(stats().lent, 0);
        assert!(!small.is_held());
        let again = Buf(Some(take()));
        assert!(again.bytes().is_empty());
        assert_eq!(again.capacity(), capacity, "the pooled vector came back");
        drop(again);
        assert_eq!(stats().lent, 0);

        let pooled = stats().pooled;
        let mut big = Buf::new();
        big.vec().resize(BUFFER_RETAIN_BYTES + 1, 0);
        drop(big);
        assert!(
            stats().pooled <= pooled,
            "a big buffer is freed, not pooled"
        );
        assert!(stats().pooled_bytes <= POOL_BUFFERS_MAX * BUFFER_RETAIN_BYTES);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let bufs: Vec<Buf> = (0..POOL_BUFFERS_MAX + 10)
            .map(|_| {
                let mut b = Buf::new();
                b.vec().push(1);
                b
            })
            .collect();
        assert_eq!(stats().lent, POOL_BUFFERS_MAX + 10);
        drop(bufs);
        assert_eq!(stats().pooled, POOL_BUFFERS_MAX);
        assert_eq!(stats().lent, 0);
    }

    #[test]
    fn release_if_empty_keeps_unconsumed_bytes() {
        let mut b = Buf::new();
        b.vec().extend_from_slice(b"GET");
        b.release_if_empty();
        assert_eq!(b.bytes(), b"GET");
        b.vec().clear();
        b.release_if_empty();
        assert!(!b.is_held());
    }
}
