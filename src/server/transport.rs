//! What carries a connection's bytes: the TCP socket itself, or TLS over it.
//!
//! The reactor reads plaintext and flushes its [`OutQueue`] through a [`Transport`] and does not
//! otherwise care which kind it has. TLS is rustls used sans-IO, as in rustls' own mio example:
//!
//! ```text
//! readable: socket.read(scratch) -> read_tls(&scratch[..]) -> process_new_packets
//!           -> reader() plaintext into the loop's read buffer -> protocol core
//!           (handshake replies are written at once; later TLS output waits for a flush)
//! flush:    OutQueue chunks -> writer().write_vectored (records of up to 16 KiB, encrypted into
//!           rustls' buffer, at most 64 KiB of it) -> write_tls -> one writev of the records
//! closing:  send_close_notify -> write_tls -> shutdown(Write)
//! ```
//!
//! Contract with the reactor:
//! * [`Transport::read`] fills the buffer it is given with plaintext and says whether the socket
//!   may hold more (`Received::more`); 0 bytes means the peer is done (FIN or close_notify).
//!   TLS errors (garbage, plain HTTP on the TLS port, a bad record) come back as `InvalidData`
//!   after the alert is attempted.
//! * Ciphertext is read from the socket with one `read` of up to the caller's scratch buffer
//!   (shared by the loop), never more than the plaintext buffer can take, so every record
//!   rustls completes is drained into the caller's buffer at once: when `read` returns, rustls
//!   holds at most a partial record, and "the socket would block" still means "nothing more".
//! * [`Transport::pending_bytes`] is TLS output not yet on the wire; the reactor adds it to the
//!   plaintext queue for the slow-consumer bound. [`Transport::has_pending`] keeps a connection
//!   flushing (and, since interest includes WRITABLE, woken) until rustls' buffer is empty.
//!
//! Interest: every connection is registered once, edge-triggered, for READABLE | WRITABLE, plain
//! or TLS. A WRITABLE edge only fires when the socket's send buffer goes from full to not full,
//! which only happens while output (plaintext or TLS) is pending, so this is rustls' "WRITABLE
//! only while TLS output is pending" without an `epoll_ctl` per change.
//!
//! Cost model (TLS): a flush is one AEAD pass over the queued plaintext into records (fan-out
//! frames are still encoded once by the hub; encryption is per connection by nature, one copy
//! plus the cipher per delivery) and one `writev` of the records. A read is one `read` of
//! ciphertext, one copy into rustls' deframer, decryption in place, one copy of the plaintext out.
//! An idle TLS connection keeps rustls' state: the record keys and a 4 KiB deframer buffer.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use super::outbuf::{BufferPool, Flushed, OutQueue};

/// Room kept in the plaintext buffer for a record rustls already holds part of: the largest
/// TLS record on the wire (16 KiB of plaintext plus expansion and header).
const RECORD_SLACK: usize = 16 * 1024 + 2048 + 5;

/// The outcome of a successful read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Plaintext bytes put at the start of the buffer; 0: the peer has finished sending.
    pub n: usize,
    /// The socket may hold more: read again before waiting for readiness.
    pub more: bool,
}

pub enum Transport {
    Plain(TcpStream),
    /// Boxed: rustls' state is a few hundred bytes and plain connections stay small.
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    socket: TcpStream,
    tls: ServerConnection,
    /// Plaintext handed to rustls whose records are not all written yet, for the queue bound.
    fed: usize,
    /// The peer sent close_notify.
    peer_closed: bool,
    close_notify_sent: bool,
    /// The end of the handshake was reported by [`Transport::handshake_completed`].
    handshake_reported: bool,
}

impl Transport {
    pub fn plain(socket: TcpStream) -> Transport {
        Transport::Plain(socket)
    }

    /// A TLS server side for a new connection: its handshake uses `config` (the pair current at
    /// accept time; a later reload does not touch it).
    pub fn tls(socket: TcpStream, config: &Arc<ServerConfig>) -> Result<Transport, rustls::Error> {
        let tls = ServerConnection::new(Arc::clone(config))?;
        Ok(Transport::Tls(Box::new(TlsStream {
            socket,
            tls,
            fed: 0,
            peer_closed: false,
            close_notify_sent: false,
            handshake_reported: false,
        })))
    }

    #[inline]
    pub fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.socket,
        }
    }

    #[inline]
    pub fn socket_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.socket,
        }
    }

    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The TLS handshake has not finished (always false for plain TCP).
    #[inline]
    pub fn handshaking(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.is_handshaking(),
        }
    }

    /// True once, the first time it is asked after the TLS handshake has finished.
    pub fn handshake_completed(&mut self) -> bool {
        match self {
            Transport::Tls(t) if !t.handshake_reported && !t.tls.is_handshaking() => {
                t.handshake_reported = true;
                true
            }
            _ => false,
        }
    }

    /// TLS output waits to be written.
    #[inline]
    pub fn has_pending(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Bytes of output held by the TLS layer (0 for plain TCP).
    #[inline]
    pub fn pending_bytes(&self) -> usize {
        match self {
            Transport::Tls(t) if t.tls.wants_write() => t.fed,
            _ => 0,
        }
    }

    /// Reads plaintext into `buf`. `scratch` holds ciphertext on its way into rustls (shared by
    /// every connection; unused for plain TCP).
    pub fn read(&mut self, buf: &mut [u8], scratch: &mut [u8]) -> io::Result<Received> {
        match self {
            Transport::Plain(s) => {
                let n = s.read(buf)?;
                Ok(Received { n, more: n == buf.len() })
            }
            Transport::Tls(t) => t.read(buf, scratch),
        }
    }

    /// Writes the queue (plaintext) and any TLS output, as far as the socket takes it.
    /// `written` counts bytes that went onto the wire.
    pub fn flush(&mut self, out: &mut OutQueue, pool: &mut BufferPool) -> io::Result<Flushed> {
        self.flush_limited(out, pool, usize::MAX)
    }

    /// As [`flush`](Self::flush), taking at most `limit` bytes of `out` (the reactor's write
    /// budget; see `lifecycle`). Stopped by the limit, the result is not `blocked`. Inlined: a
    /// fan-out pays this once per delivery, and the plain arm is the outbuf's short fast path.
    #[inline]
    pub fn flush_limited(
        &mut self,
        out: &mut OutQueue,
        pool: &mut BufferPool,
        limit: usize,
    ) -> io::Result<Flushed> {
        match self {
            Transport::Plain(s) => out.flush_limited(s, pool, limit),
            Transport::Tls(t) => t.flush(out, pool, limit),
        }
    }

    /// Writes a one-off response at once when nothing is queued before it, queueing the rest
    /// (see [`OutQueue::write_or_queue`]). Returns the bytes that went onto the wire.
    pub fn write_or_queue(
        &mut self,
        out: &mut OutQueue,
        pool: &mut BufferPool,
        bytes: &[u8],
    ) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => out.write_or_queue(s, pool, bytes),
            Transport::Tls(t) => {
                out.push_bytes(pool, bytes);
                Ok(t.flush(out, pool, usize::MAX)?.written)
            }
        }
    }

    /// Ends our side once every byte is out: close_notify (TLS), then FIN. `Ok(false)`: the
    /// close_notify is still queued; call again when writable.
    pub fn finish(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(Shutdown::Write);
                Ok(true)
            }
            Transport::Tls(t) => {
                if !t.close_notify_sent {
                    t.tls.send_close_notify();
                    t.close_notify_sent = true;
                }
                if t.write_tls()? {
                    return Ok(false);
                }
                let _ = t.socket.shutdown(Shutdown::Write);
                Ok(true)
            }
        }
    }
}

impl TlsStream {
    fn read(&mut self, buf: &mut [u8], scratch: &mut [u8]) -> io::Result<Received> {
        let mut n = self.drain_plaintext(buf);
        loop {
            if self.peer_closed {
                // close_notify: whatever came before it is delivered, then the end.
                return Ok(Received { n, more: n > 0 });
            }
            let room = buf.len() - n;
            if room <= RECORD_SLACK || scratch.is_empty() {
                // The caller's buffer is (nearly) full: the socket may hold more.
                return Ok(Received { n, more: true });
            }
            let want = (room - RECORD_SLACK).min(scratch.len());
            let got = match self.socket.read(&mut scratch[..want]) {
                // FIN: report what came before it; the next read reports the end.
                Ok(0) => return Ok(Received { n, more: n > 0 }),
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => {
                    return Ok(Received { n, more: false })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut rest = &scratch[..got];
            while !rest.is_empty() {
                self.tls.read_tls(&mut rest)?;
                let state = match self.tls.process_new_packets() {
                    Ok(state) => state,
                    Err(e) => {
                        // Tell the peer why (the alert rustls queued), best effort.
                        let _ = self.write_tls();
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                };
                if state.peer_has_closed() {
                    self.peer_closed = true;
                }
                n += self.drain_plaintext(&mut buf[n..]);
            }
            if self.tls.wants_write() && (self.tls.is_handshaking() || self.fed == 0) {
                // Handshake flights and session tickets: they answer this read, and no queued
                // output of ours is behind them. WouldBlock leaves them for a flush.
                self.write_tls()?;
            }
            if got < want {
                // The socket is drained. After a close_notify with data before it, one more
                // read reports the end.
                if n == 0 && !self.peer_closed {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                return Ok(Received { n, more: self.peer_closed && n > 0 });
            }
        }
    }

    /// Moves the plaintext rustls holds into `buf`; the read path keeps room for all of it.
    fn drain_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match self.tls.reader().read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                // WouldBlock: nothing more decrypted. Others cannot happen before we feed rustls
                // an end of stream, which we never do (a FIN is handled above it).
                Err(_) => break,
            }
        }
        n
    }

    /// Writes TLS output until rustls has none or the socket blocks. `Ok(true)`: some is left.
    fn write_tls(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => self.fed = self.fed.saturating_sub(k),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.fed = 0;
        Ok(false)
    }

    fn flush(&mut self, out: &mut OutQueue, pool: &mut BufferPool, limit: usize) -> io::Result<Flushed> {
        let mut written = 0;
        let mut taken = 0;
        loop {
            if !out.is_empty() && !self.tls.is_handshaking() && taken < limit {
                // Into records, as much as rustls' buffer (and the write budget) takes.
                let f = out.flush_limited(&mut Plaintext(&mut self.tls), pool, limit - taken)?;
                self.fed += f.written;
                taken += f.written;
            }
            if !self.tls.wants_write() {
                self.fed = 0;
                return Ok(Flushed { written, blocked: !out.is_empty() && taken < limit });
            }
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    written += k;
                    self.fed = self.fed.saturating_sub(k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Flushed { written, blocked: true })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// rustls' plaintext side as a sink for [`OutQueue::flush`]: a full TLS buffer is `WouldBlock`.
struct Plaintext<'a>(&'a mut ServerConnection);

impl Write for Plaintext<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.0.writer().write_vectored(bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
