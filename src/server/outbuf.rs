//! Per-connection output: a queue of byte chunks, written with one `writev` per flush.
//!
//! Two kinds of chunk: frames shared by every subscriber of a publish (`Rc<[u8]>`, encoded once by
//! the hub) and bytes owned by this connection (replies, echoes, pongs), which are appended to
//! one tail buffer so many small frames leave in one write. Owned buffers come from and go back
//! to a [`BufferPool`] owned by the reactor, so steady-state echo allocates nothing.
//!
//! Frames are never glued across chunk boundaries in a way that changes them: each frame is
//! appended whole, and the socket sees exactly the concatenation of the queue.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Most iovecs handed to one `writev`.
const MAX_IOVECS: usize = 512;
/// Queues this short are gathered in a small array, and those up to [`SOME_IOVECS`] in a middle
/// one: every slot of the array is initialised before each `writev` (all of [`MAX_IOVECS`] was
/// about 13 instructions per delivery in broadcast 100x100, where a subscriber's flush gathers
/// about 100 frames).
const FEW_IOVECS: usize = 16;
const SOME_IOVECS: usize = 128;
/// Chunk-list capacity an emptied queue keeps (32 bytes each).
const MAX_KEPT_CHUNKS: usize = 1024;
/// Pool entries larger than this are freed instead of kept.
const POOL_MAX_CAPACITY: usize = 64 * 1024;
/// Most buffers the pool keeps.
const POOL_MAX_BUFFERS: usize = 32;

/// Recycled owned buffers.
#[derive(Default)]
pub struct BufferPool {
    free: Vec<Vec<u8>>,
}

impl BufferPool {
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(4096))
    }

    pub fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= POOL_MAX_CAPACITY && self.free.len() < POOL_MAX_BUFFERS {
            buf.clear();
            self.free.push(buf);
        }
    }
}

enum Chunk {
    Shared(Rc<[u8]>),
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Owned(b) => b,
        }
    }
}

/// What a flush achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flushed {
    pub written: usize,
    /// The socket would take no more (output remains queued).
    pub blocked: bool,
}

/// The output queue of one connection. Empty, it owns no heap memory.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written (chunks are smaller than 4 GiB: messages are
    /// bounded by the maximum message size).
    head_written: u32,
    /// Bytes queued and not yet written.
    queued: usize,
    /// Shared (hub) frames queued, for the send-queue bound.
    shared_frames: u32,
}

impl OutQueue {
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    #[inline]
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    #[inline]
    pub fn shared_frames(&self) -> usize {
        self.shared_frames as usize
    }

    /// Runs `write` on the owned tail buffer (creating it from the pool if needed) and accounts
    /// for what it appended. The closure gets the buffer to append whole frames to.
    #[inline]
    pub fn append_with<R>(&mut self, pool: &mut BufferPool, write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let tail = self.owned_tail(pool);
        let before = tail.len();
        let result = write(tail);
        let added = tail.len() - before;
        let tail_empty = tail.is_empty();
        self.queued += added;
        if added == 0 && tail_empty {
            // Nothing was written into a fresh buffer: hand it back.
            if let Some(Chunk::Owned(buf)) = self.chunks.pop_back() {
                pool.give(buf);
            }
        }
        result
    }

    /// Appends bytes (whole frames) owned by this connection.
    pub fn push_bytes(&mut self, pool: &mut BufferPool, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.append_with(pool, |tail| tail.extend_from_slice(bytes));
        }
    }

    /// Writes `bytes` straight to the socket when nothing is queued before them, and queues only
    /// what the socket did not take. Used for one-off responses (the 101), so a burst of
    /// handshakes does not hold a pooled buffer per connection until the end of the turn.
    pub fn write_or_queue<W: Write>(
        &mut self,
        sink: &mut W,
        pool: &mut BufferPool,
        bytes: &[u8],
    ) -> io::Result<usize> {
        let mut written = 0;
        if self.is_empty() {
            loop {
                match sink.write(&bytes[written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        written += n;
                        if written == bytes.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        self.push_bytes(pool, &bytes[written..]);
        Ok(written)
    }

    /// Queues a frame shared with other connections: no copy, one reference count.
    pub fn push_shared(&mut self, frame: &Rc<[u8]>) {
        self.queued += frame.len();
        self.shared_frames += 1;
        self.chunks.push_back(Chunk::Shared(Rc::clone(frame)));
    }

    fn owned_tail(&mut self, pool: &mut BufferPool) -> &mut Vec<u8> {
        // A partly written owned chunk may still grow at its end: the written prefix is skipped
        // by `head_written`, which appending does not disturb.
        if !matches!(self.chunks.back(), Some(Chunk::Owned(_))) {
            self.chunks.push_back(Chunk::Owned(pool.take()));
        }
        match self.chunks.back_mut() {
            Some(Chunk::Owned(buf)) => buf,
            _ => unreachable!("an owned tail was just ensured"),
        }
    }

    /// Writes as much as the socket takes, several chunks per `writev`, until the queue is
    /// empty or the socket would block.
    pub fn flush<W: Write>(&mut self, sink: &mut W, pool: &mut BufferPool) -> io::Result<Flushed> {
        self.flush_limited(sink, pool, usize::MAX)
    }

    /// As [`flush`](Self::flush), but hands the socket at most `limit` bytes in all (the slices
    /// of the last `writev` are cut to fit), so one connection's big queue costs one turn a
    /// bounded copy. Stopped by the limit, the result is neither empty nor `blocked`. Always
    /// inlined (it is the short fast path below and a call to the general one), into the
    /// end-of-turn flush that runs it once per delivery in a wide fan-out.
    #[inline(always)]
    pub fn flush_limited<W: Write>(
        &mut self,
        sink: &mut W,
        pool: &mut BufferPool,
        limit: usize,
    ) -> io::Result<Flushed> {
        // The lone chunk written whole: a fan-out to many subscribers is one shared frame on an
        // empty queue per subscriber per turn, and an echo or a reply batch is one owned buffer.
        // Straight-line here (one `write`, the chunk dropped, the counters reset), without the
        // general path's loop, `consume` dispatch and 8 KiB iovec frame, which stays out of line
        // for everything else (1 to 10k: see bench/RESULTS.md). Anything but a whole write (a
        // partial one, WouldBlock, an error) is handed on to the general path as the result of
        // its first write, so it is judged exactly as before (proptest `lone_path_agrees`).
        let first = if self.chunks.len() == 1 && self.queued != 0 && self.queued <= limit {
            let bytes = &self.chunks[0].bytes()[self.head_written as usize..];
            let result = sink.write(bytes);
            if let Ok(n) = result {
                if n == self.queued {
                    self.consume_lone(pool);
                    return Ok(Flushed { written: n, blocked: false });
                }
            }
            Some(result)
        } else {
            None
        };
        self.flush_general(sink, pool, limit, first)
    }

    /// The general flush: a `writev` of as many chunks as fit, again until the queue is empty,
    /// the socket would block or `limit` bytes went. `first` is the outcome of a write already
    /// made of the whole (lone) chunk, taken as the first iteration's.
    #[inline(never)]
    fn flush_general<W: Write>(
        &mut self,
        sink: &mut W,
        pool: &mut BufferPool,
        limit: usize,
        mut first: Option<io::Result<usize>>,
    ) -> io::Result<Flushed> {
        let mut written_total = 0;
        while !self.is_empty() && written_total < limit {
            let room = limit - written_total;
            let n = {
                let head_written = self.head_written as usize;
                let result = if let Some(result) = first.take() {
                    result
                } else if self.chunks.len() == 1 {
                    // One chunk (an echo or a reply batch in one owned buffer) after a partial
                    // write: a plain write, without filling an iovec array for one entry.
                    let bytes = &self.chunks[0].bytes()[head_written..];
                    sink.write(&bytes[..bytes.len().min(room)])
                } else if self.chunks.len() <= FEW_IOVECS {
                    self.write_gathered::<W, FEW_IOVECS>(sink, room)
                } else if self.chunks.len() <= SOME_IOVECS {
                    self.write_gathered::<W, SOME_IOVECS>(sink, room)
                } else {
                    self.write_gathered::<W, MAX_IOVECS>(sink, room)
                };
                match result {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Flushed { written: written_total, blocked: true });
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            written_total += n;
            self.consume(n, pool);
        }
        Ok(Flushed { written: written_total, blocked: false })
    }

    /// [`consume`](Self::consume) of a queue of one chunk written whole. Always inlined: the
    /// lone-chunk fast path is its caller, and as a call it cost as much again as its body.
    #[inline(always)]
    fn consume_lone(&mut self, pool: &mut BufferPool) {
        if let Some(Chunk::Owned(buf)) = self.chunks.pop_front() {
            pool.give(buf);
        }
        self.head_written = 0;
        self.queued = 0;
        self.shared_frames = 0;
        self.release_large_list();
    }

    /// One `writev` of the queued chunks (at most `N` of them and `room` bytes), gathered in an
    /// array of `N` slots on the stack.
    #[inline(always)]
    fn write_gathered<W: Write, const N: usize>(&self, sink: &mut W, room: usize) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); N];
        let count = self.fill_iovecs(&mut slices, room);
        sink.write_vectored(&slices[..count])
    }

    /// Points `slices` at the queued chunks (the first one past what was written already), at
    /// most `room` bytes in all; returns how many it filled.
    #[inline]
    fn fill_iovecs<'a>(&'a self, slices: &mut [IoSlice<'a>], room: usize) -> usize {
        if room >= self.queued {
            // Everything queued fits (the usual case: the budget is far above one turn's
            // deliveries): whole chunks, nothing to cut. A fan-out of small frames pays this
            // once per delivery. Both paths fill the same slices (proptest
            // `fill_paths_agree`).
            self.fill_iovecs_whole(slices)
        } else {
            self.fill_iovecs_cut(slices, room)
        }
    }

    /// [`fill_iovecs`](Self::fill_iovecs) when every queued byte fits. The deque's two halves
    /// are walked as plain slices: zipped with the deque's own iterator, each chunk paid a
    /// wrap-around check (a fan-out to a busy topic gathers about 100 chunks per flush).
    fn fill_iovecs_whole<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let (front, back) = self.chunks.as_slices();
        let mut count = 0;
        for half in [front, back] {
            for (slot, chunk) in slices[count..].iter_mut().zip(half) {
                *slot = IoSlice::new(chunk.bytes());
                count += 1;
            }
        }
        if let Some(first) = self.chunks.front() {
            slices[0] = IoSlice::new(&first.bytes()[self.head_written as usize..]);
        }
        count
    }

    /// [`fill_iovecs`](Self::fill_iovecs), cutting the slices at `room` bytes: the general path.
    fn fill_iovecs_cut<'a>(&'a self, slices: &mut [IoSlice<'a>], room: usize) -> usize {
        let mut count = 0;
        let mut offered = 0;
        for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
            let bytes = chunk.bytes();
            let bytes = if count == 0 { &bytes[self.head_written as usize..] } else { bytes };
            let bytes = &bytes[..bytes.len().min(room - offered)];
            *slot = IoSlice::new(bytes);
            count += 1;
            offered += bytes.len();
            if offered == room {
                break;
            }
        }
        count
    }

    /// Drops `n` written bytes from the front.
    #[inline]
    fn consume(&mut self, n: usize, pool: &mut BufferPool) {
        if n == self.queued {
            // Everything left: the common case (a turn's deliveries in one `writev`). One pass
            // drops every chunk, without the general path's length arithmetic per chunk; a
            // fan-out of small frames pays this once per delivery. Both paths leave the same
            // queue (proptest `consume_paths_agree`).
            self.consume_all(pool);
        } else {
            self.consume_front(n, pool);
        }
    }

    /// [`consume`](Self::consume) of every queued byte.
    fn consume_all(&mut self, pool: &mut BufferPool) {
        // Measured per chunk under callgrind: many chunks (a subscriber of a busy topic) go
        // cheapest in one pass over the slices and a `clear`, which costs more than popping
        // when there is just one (a fan-out to many subscribers, one frame each). `drain` is
        // dearer than either.
        if self.chunks.len() <= 1 {
            return self.consume_lone(pool);
        }
        // Owned buffers go back to the pool; the search stops at the last of them (a busy
        // subscriber's queue is mostly shared frames, often only them), then `clear` drops the
        // shared frames' references.
        let mut owned = self.chunks.len() - self.shared_frames as usize;
        for chunk in self.chunks.iter_mut() {
            if owned == 0 {
                break;
            }
            if let Chunk::Owned(buf) = chunk {
                pool.give(std::mem::take(buf));
                owned -= 1;
            }
        }
        self.chunks.clear();
        self.head_written = 0;
        self.queued = 0;
        self.shared_frames = 0;
        self.release_large_list();
    }

    /// [`consume`](Self::consume), chunk by chunk: the general path, for a partial write.
    fn consume_front(&mut self, mut n: usize, pool: &mut BufferPool) {
        self.queued -= n;
        while n > 0 {
            let front_len = self.chunks.front().map_or(0, |c| c.bytes().len()) - self.head_written as usize;
            if n < front_len {
                self.head_written += n as u32;
                return;
            }
            n -= front_len;
            self.head_written = 0;
            match self.chunks.pop_front() {
                Some(Chunk::Owned(buf)) => pool.give(buf),
                Some(Chunk::Shared(_)) => self.shared_frames -= 1,
                None => return,
            }
        }
        self.release_large_list();
    }

    /// An emptied queue keeps its chunk list for the next burst (regrowing it every round of a
    /// busy topic was measurable churn), unless a rare burst made it large.
    #[inline]
    fn release_large_list(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > MAX_KEPT_CHUNKS {
            self.chunks = VecDeque::new();
        }
    }

    /// Releases everything (the connection is going away).
    pub fn clear(&mut self, pool: &mut BufferPool) {
        for chunk in self.chunks.drain(..) {
            if let Chunk::Owned(buf) = chunk {
                pool.give(buf);
            }
        }
        self.chunks = VecDeque::new();
        self.head_written = 0;
        self.queued = 0;
        self.shared_frames = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `limit` bytes per call, then blocks after `budget` bytes.
    struct Trickle {
        got: Vec<u8>,
        per_call: usize,
        budget: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.per_call - n).min(self.budget);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                self.budget -= take;
                if n == self.per_call || self.budget == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_is_the_concatenation_whatever_the_sink_takes() {
        for per_call in [1, 3, 7, 100, 10_000] {
            let mut pool = BufferPool::default();
            let mut q = OutQueue::default();
            let shared: Rc<[u8]> = Rc::from(&b"SHARED"[..]);
            let mut expected = Vec::new();
            for i in 0..20u8 {
                if i % 3 == 0 {
                    q.push_shared(&shared);
                    expected.extend_from_slice(&shared);
                } else {
                    q.push_bytes(&mut pool, &[i; 5]);
                    expected.extend_from_slice(&[i; 5]);
                }
            }
            assert_eq!(q.queued_bytes(), expected.len());
            let mut sink = Trickle { got: Vec::new(), per_call, budget: 50, calls: 0 };
            let f = q.flush(&mut sink, &mut pool).unwrap();
            assert!(f.blocked);
            assert_eq!(f.written, 50);
            assert_eq!(q.queued_bytes(), expected.len() - 50);
            sink.budget = usize::MAX;
            let f = q.flush(&mut sink, &mut pool).unwrap();
            assert!(!f.blocked);
            assert_eq!(sink.got, expected, "per_call {per_call}");
            assert!(q.is_empty());
            assert_eq!(q.shared_frames(), 0);
            assert_eq!(Rc::strong_count(&shared), 1, "written shared frames are released");
        }
    }

    #[test]
    fn a_limited_flush_stops_at_the_limit_and_resumes_exactly() {
        let mut pool = BufferPool::default();
        let mut q = OutQueue::default();
        let big: Rc<[u8]> = (0..=255u8).cycle().take(10_000).collect::<Vec<u8>>().into();
        q.push_shared(&big);
        q.push_bytes(&mut pool, b"tail");
        q.push_shared(&big);
        let mut expected = big.to_vec();
        expected.extend_from_slice(b"tail");
        expected.extend_from_slice(&big);
        let mut sink = Trickle { got: Vec::new(), per_call: 3000, budget: usize::MAX, calls: 0 };
        let mut turns = 0;
        while !q.is_empty() {
            let f = q.flush_limited(&mut sink, &mut pool, 4096).unwrap();
            assert!(!f.blocked);
            assert!(f.written <= 4096, "wrote {} past the limit", f.written);
            turns += 1;
        }
        assert_eq!(sink.got, expected);
        assert_eq!(turns, expected.len().div_ceil(4096));
        assert_eq!(q.shared_frames(), 0);
    }

    #[test]
    fn many_small_frames_leave_in_one_call() {
        let mut pool = BufferPool::default();
        let mut q = OutQueue::default();
        for _ in 0..16 {
            q.push_bytes(&mut pool, b"0123456789abcdef");
        }
        let mut sink = Trickle { got: Vec::new(), per_call: usize::MAX, budget: usize::MAX, calls: 0 };
        q.flush(&mut sink, &mut pool).unwrap();
        assert_eq!(sink.calls, 1);
        assert_eq!(sink.got.len(), 256);
    }

    /// A queue built from `(shared?, len)` pairs (bytes 0, 1, ...), with the shared frames it
    /// references.
    fn queue_of(parts: &[(bool, usize)], pool: &mut BufferPool) -> (OutQueue, Vec<Rc<[u8]>>) {
        let mut q = OutQueue::default();
        let shared = append_parts(&mut q, parts, 0, pool);
        (q, shared)
    }

    proptest::proptest! {
        /// The everything-written fast path of `consume` leaves exactly what the chunk-by-chunk
        /// path leaves: an empty queue, every shared frame released, every owned buffer back in
        /// the pool; also after a partial write first (a written prefix of the head chunk).
        #[test]
        fn consume_paths_agree(
            // Chunks are never empty: a frame has at least its 2-byte header, and `push_bytes`
            // queues nothing for no bytes.
            parts in proptest::collection::vec((proptest::bool::ANY, 1usize..300), 0..40),
            first in 0usize..2000,
            more in proptest::collection::vec((proptest::bool::ANY, 1usize..300), 0..40),
        ) {
            let mut pool_a = BufferPool::default();
            let mut pool_b = BufferPool::default();
            let (mut a, mut shared_a) = queue_of(&parts, &mut pool_a);
            let (mut b, mut shared_b) = queue_of(&parts, &mut pool_b);
            let first = first.min(a.queued_bytes());
            a.consume_front(first, &mut pool_a);
            b.consume_front(first, &mut pool_b);
            // More queued after a partial write (the ring may wrap around).
            shared_a.extend(push_parts(&mut a, &more, &mut pool_a));
            shared_b.extend(push_parts(&mut b, &more, &mut pool_b));
            let rest = a.queued_bytes();
            a.consume_front(rest, &mut pool_a);
            b.consume(rest, &mut pool_b);
            for q in [&a, &b] {
                proptest::prop_assert!(q.is_empty());
                proptest::prop_assert_eq!(q.shared_frames(), 0);
                proptest::prop_assert_eq!(q.head_written, 0);
                proptest::prop_assert_eq!(q.chunks.len(), 0);
            }
            proptest::prop_assert_eq!(pool_a.free.len(), pool_b.free.len());
            for (x, y) in shared_a.iter().zip(&shared_b) {
                proptest::prop_assert_eq!(Rc::strong_count(x), 1);
                proptest::prop_assert_eq!(Rc::strong_count(y), 1);
            }
        }
    }

    /// Appends `(shared?, len)` parts to `q` (bytes 200, 201, ...), returning the shared frames.
    fn push_parts(q: &mut OutQueue, parts: &[(bool, usize)], pool: &mut BufferPool) -> Vec<Rc<[u8]>> {
        append_parts(q, parts, 200, pool)
    }

    /// Appends `(shared?, len)` parts to `q`, part i filled with byte `first + i`, returning
    /// the shared frames.
    fn append_parts(
        q: &mut OutQueue,
        parts: &[(bool, usize)],
        first: u8,
        pool: &mut BufferPool,
    ) -> Vec<Rc<[u8]>> {
        let mut shared = Vec::new();
        for (i, &(is_shared, len)) in parts.iter().enumerate() {
            let bytes = vec![first.wrapping_add(i as u8); len];
            if is_shared {
                let frame: Rc<[u8]> = bytes.into();
                q.push_shared(&frame);
                shared.push(frame);
            } else {
                q.push_bytes(pool, &bytes);
            }
        }
        shared
    }

    #[test]
    fn a_wrapped_queue_is_gathered_whole_in_order() {
        let mut pool = BufferPool::default();
        let (mut q, _shared) = queue_of(&[(true, 3); 6], &mut pool);
        q.consume_front(4 * 3, &mut pool);
        let _more = push_parts(&mut q, &[(true, 2); 4], &mut pool);
        assert!(!q.chunks.as_slices().1.is_empty(), "the test needs a wrapped ring");
        let mut slices = vec![IoSlice::new(&[]); 16];
        let n = q.fill_iovecs_whole(&mut slices);
        let got: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(got, [4, 4, 4, 5, 5, 5, 200, 200, 201, 201, 202, 202, 203, 203]);
    }

    proptest::proptest! {
        /// When everything fits, the whole-chunk path of `fill_iovecs` offers exactly the
        /// slices of the cutting path (after a partial write too, and with fewer slots than
        /// chunks).
        #[test]
        fn fill_paths_agree(
            parts in proptest::collection::vec((proptest::bool::ANY, 1usize..300), 0..40),
            first in 0usize..2000,
            more in proptest::collection::vec((proptest::bool::ANY, 1usize..300), 0..40),
            slots in 1usize..48,
        ) {
            let mut pool = BufferPool::default();
            let (mut q, _shared) = queue_of(&parts, &mut pool);
            let first = first.min(q.queued_bytes());
            q.consume_front(first, &mut pool);
            // Chunks queued after some were written: the deque's ring wraps around.
            let _more = push_parts(&mut q, &more, &mut pool);
            let mut a = vec![IoSlice::new(&[]); slots];
            let mut b = vec![IoSlice::new(&[]); slots];
            let na = q.fill_iovecs_whole(&mut a);
            let nb = q.fill_iovecs_cut(&mut b, q.queued_bytes().max(1));
            // The cutting path stops early after a slice that reaches the room exactly, or at
            // empty trailing chunks: compare what both offer.
            let bytes = |s: &[IoSlice<'_>]| s.iter().flat_map(|x| x.iter().copied()).collect::<Vec<u8>>();
            proptest::prop_assert_eq!(bytes(&a[..na]), bytes(&b[..nb]));
            proptest::prop_assert_eq!(na, slots.min(q.chunks.len()));
        }
    }

    /// A sink that fails its first call with `first_error`, if any, then behaves as `inner`.
    struct Flaky {
        inner: Trickle,
        first_error: Option<io::ErrorKind>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            match self.first_error.take() {
                Some(kind) => Err(kind.into()),
                None => self.inner.write_vectored(bufs),
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    proptest::proptest! {
        /// `flush_limited` (with its lone-chunk fast path) and the general path alone give the
        /// same outcome, write the same bytes and leave the same queue, whatever the sink takes
        /// per call, when it blocks or fails first, and whatever the limit; also for a lone
        /// chunk partly written before.
        #[test]
        fn lone_path_agrees(
            // Mostly one chunk (the fast path's case), sometimes a few.
            parts in proptest::collection::vec((proptest::bool::ANY, 1usize..300), 0..4),
            first in 0usize..600,
            per_call in 1usize..700,
            budget in 0usize..700,
            limit in 0usize..700,
            error in proptest::option::of(proptest::sample::select(vec![
                io::ErrorKind::WouldBlock,
                io::ErrorKind::Interrupted,
                io::ErrorKind::ConnectionReset,
            ])),
        ) {
            let run = |fast: bool| {
                let mut pool = BufferPool::default();
                let (mut q, shared) = queue_of(&parts, &mut pool);
                let first = first.min(q.queued_bytes());
                q.consume_front(first, &mut pool);
                let inner = Trickle { got: Vec::new(), per_call, budget, calls: 0 };
                let mut sink = Flaky { inner, first_error: error };
                let result = if fast {
                    q.flush_limited(&mut sink, &mut pool, limit)
                } else {
                    q.flush_general(&mut sink, &mut pool, limit, None)
                };
                let result = result.map_err(|e| e.kind());
                let counts: Vec<usize> = shared.iter().map(Rc::strong_count).collect();
                let state = (q.queued_bytes(), q.shared_frames(), q.head_written, q.chunks.len());
                (result, sink.inner.got, state, pool.free.len(), counts)
            };
            proptest::prop_assert_eq!(run(true), run(false));
        }
    }

    proptest::proptest! {
        /// Whatever the array a `writev` is gathered in (few, some or the most chunks: queues
        /// of up to 600 chunks cross all three), the socket gets exactly the concatenation of
        /// the queue, in calls of at most `MAX_IOVECS` slices, and the queue ends empty.
        #[test]
        fn every_gather_size_writes_the_concatenation(
            parts in proptest::collection::vec((proptest::bool::ANY, 1usize..40), 0..600),
            per_call in 1usize..5000,
        ) {
            let mut pool = BufferPool::default();
            let (mut q, shared) = queue_of(&parts, &mut pool);
            let expected: Vec<u8> = parts.iter().enumerate().flat_map(|(i, &(_, len))| vec![i as u8; len]).collect();
            let mut sink = Trickle { got: Vec::new(), per_call, budget: usize::MAX, calls: 0 };
            let f = q.flush(&mut sink, &mut pool).unwrap();
            proptest::prop_assert_eq!(f, Flushed { written: expected.len(), blocked: false });
            proptest::prop_assert_eq!(sink.got, expected);
            proptest::prop_assert!(q.is_empty());
            proptest::prop_assert_eq!(q.shared_frames(), 0);
            for frame in &shared {
                proptest::prop_assert_eq!(Rc::strong_count(frame), 1);
            }
        }
    }

    #[test]
    fn owned_buffers_are_recycled() {
        let mut pool = BufferPool::default();
        let mut q = OutQueue::default();
        q.push_bytes(&mut pool, b"abc");
        let mut sink = Trickle { got: Vec::new(), per_call: usize::MAX, budget: usize::MAX, calls: 0 };
        q.flush(&mut sink, &mut pool).unwrap();
        assert_eq!(pool.free.len(), 1);
        q.push_bytes(&mut pool, b"def");
        assert_eq!(pool.free.len(), 0, "the pooled buffer is reused");
    }
}
