//! Zero-copy file regions: a body chunk that stands for a range of an open file,
//! written by the connection with `sendfile(2)` instead of being read into
//! memory first.
//!
//! hyper's body API only moves owned buffers, so a region travels through it as
//! a *placeholder*: a [`Chunk::Region`] whose bytes are a slice of a static,
//! never-written block of zeros, tagged by where the slice starts. The body
//! registers the real file range in the connection's [`Sendfile`] queue before
//! yielding the placeholder; the connection's writer recognises the placeholder
//! by its address and sends the registered range from the file instead.
//!
//! Placeholders must only reach a writer that recognises them. That is why a
//! body uses regions only after [`crate::FileBody::use_sendfile`] was called
//! with the queue of the connection it will be written to, and only for
//! HTTP/1 (HTTP/2 frames data itself). A writer that meets a placeholder whose
//! tag is not the next registered range fails the write, so a response can be
//! cut short but never filled with the placeholder's zeros.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};

/// The longest placeholder slice: one region is written at most this much at a time.
const PLACEHOLDER_LEN: usize = 1 << 20;

/// Distinct tags (start offsets into [`ZEROS`]); regions in flight on one
/// connection are far fewer.
const TAGS: usize = 4096;

/// Backing store of every placeholder. Zero-initialised, so it lives in `.bss`:
/// nothing ever reads or writes it, and it costs no memory until touched.
static ZEROS: [u8; PLACEHOLDER_LEN + TAGS] = [0; PLACEHOLDER_LEN + TAGS];

/// A response body chunk: bytes in memory, or a file region to be sent by the
/// connection.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A placeholder for a registered file range (see the module docs).
    Region(Region),
}

/// The placeholder of a file range registered with a [`Sendfile`] queue.
#[derive(Debug)]
pub struct Region {
    tag: usize,
    remaining: usize,
}

impl From<Bytes> for Chunk {
    fn from(b: Bytes) -> Self {
        Chunk::Bytes(b)
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Bytes(b) => b.remaining(),
            Chunk::Region(r) => r.remaining,
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Bytes(b) => b.chunk(),
            Chunk::Region(r) => &ZEROS[r.tag..r.tag + r.remaining.min(PLACEHOLDER_LEN)],
        }
    }

    fn advance(&mut self, cnt: usize) {
        match self {
            Chunk::Bytes(b) => b.advance(cnt),
            Chunk::Region(r) => r.remaining = r.remaining.saturating_sub(cnt),
        }
    }
}

/// One connection's queue of file ranges waiting to be sent, in the order their
/// placeholders were yielded. Cloning shares the queue.
#[derive(Clone, Debug, Default)]
pub struct Sendfile(Arc<Mutex<Queue>>);

#[derive(Debug, Default)]
struct Queue {
    next_tag: usize,
    jobs: VecDeque<Job>,
}

#[derive(Debug)]
struct Job {
    tag: usize,
    file: Arc<File>,
    offset: u64,
    remaining: u64,
}

impl Sendfile {
    /// An empty queue, for one connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `len` bytes of `file` from `offset` and returns the chunk that
    /// stands for them.
    pub(crate) fn push(&self, file: Arc<File>, offset: u64, len: u64) -> Chunk {
        let mut q = self.lock();
        let tag = q.next_tag;
        q.next_tag = (tag + 1) % TAGS;
        q.jobs.push_back(Job {
            tag,
            file,
            offset,
            remaining: len,
        });
        // A region longer than the address space cannot be registered; file
        // parts are far shorter than that on 64-bit targets.
        let remaining = usize::try_from(len).unwrap_or(usize::MAX);
        Chunk::Region(Region { tag, remaining })
    }

    /// The tag of a placeholder, if `slice` is one.
    pub fn placeholder(slice: &[u8]) -> Option<usize> {
        let at = (slice.as_ptr() as usize).wrapping_sub(ZEROS.as_ptr() as usize);
        (!slice.is_empty() && at < TAGS).then_some(at)
    }

    /// Sends up to `max` bytes of the region tagged `tag` to `out` with
    /// `sendfile(2)`. `out` should be non-blocking: `WouldBlock` is returned
    /// as is. A tag that is not the next registered region, or a file that
    /// ended early, is an error (the response cannot be completed).
    pub fn send(&self, tag: usize, out: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let mut q = self.lock();
        let Some(job) = q.jobs.front_mut() else {
            return Err(io::Error::other("file region written but none registered"));
        };
        if job.tag != tag {
            return Err(io::Error::other("file regions written out of order"));
        }
        let count = usize::try_from(job.remaining).unwrap_or(usize::MAX).min(max);
        let sent = send_range(out, &job.file, &mut job.offset, count)?;
        if sent == 0 && count > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its response",
            ));
        }
        job.remaining -= sent as u64;
        if job.remaining == 0 {
            q.jobs.pop_front();
        }
        Ok(sent)
    }

    /// Whether the region tagged `tag` still has bytes to send (it is the next
    /// one in the queue).
    pub fn is_pending(&self, tag: usize) -> bool {
        self.lock().jobs.front().is_some_and(|job| job.tag == tag)
    }

    /// Whether zero-copy sending works on this platform.
    pub const fn supported() -> bool {
        cfg!(target_os = "linux")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(target_os = "linux")]
fn send_range(out: BorrowedFd<'_>, file: &File, offset: &mut u64, count: usize) -> io::Result<usize> {
    Ok(rustix::fs::sendfile(out, file, Some(offset), count)?)
}

#[cfg(not(target_os = "linux"))]
fn send_range(_: BorrowedFd<'_>, _: &File, _: &mut u64, _: usize) -> io::Result<usize> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "sendfile is not available"))
}

/// Asks the kernel to start reading a file range into the page cache, so a
/// later `sendfile` on a serving thread rarely waits for the disk. Advisory:
/// failures are ignored.
pub(crate) fn prefetch(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::fs::fadvise(
            file,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::WillNeed,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn placeholders_are_recognised_and_tagged() {
        let sf = Sendfile::new();
        let file = Arc::new(tempfile::tempfile().unwrap());
        let a = sf.push(file.clone(), 0, 10);
        let b = sf.push(file, 0, 3 * PLACEHOLDER_LEN as u64);
        assert_eq!(Sendfile::placeholder(a.chunk()), Some(0));
        assert_eq!(Sendfile::placeholder(b.chunk()), Some(1));
        assert_eq!(a.chunk().len(), 10);
        assert_eq!(b.chunk().len(), PLACEHOLDER_LEN);
        assert_eq!(b.remaining(), 3 * PLACEHOLDER_LEN);
        assert_eq!(Sendfile::placeholder(&[0u8; 4]), None);
        assert_eq!(Sendfile::placeholder(Bytes::from_static(b"x").chunk()), None);
    }

    #[test]
    fn sends_the_registered_bytes_in_order_and_refuses_a_wrong_tag() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789abcdef").unwrap();
        let file = Arc::new(f);
        let sf = Sendfile::new();
        let first = sf.push(file.clone(), 2, 4);
        let second = sf.push(file, 10, 6);
        let (out, mut peer) = UnixStream::pair().unwrap();
        let tag2 = Sendfile::placeholder(second.chunk()).unwrap();
        assert!(
            sf.send(tag2, out.as_fd(), 100).is_err(),
            "second region before the first"
        );
        let tag1 = Sendfile::placeholder(first.chunk()).unwrap();
        assert_eq!(sf.send(tag1, out.as_fd(), 3).unwrap(), 3);
        assert_eq!(sf.send(tag1, out.as_fd(), 100).unwrap(), 1);
        assert_eq!(sf.send(tag2, out.as_fd(), 100).unwrap(), 6);
        drop(out);
        let mut got = String::new();
        peer.read_to_string(&mut got).unwrap();
        assert_eq!(got, "2345abcdef");
        assert!(sf.send(tag2, peer.as_fd(), 1).is_err(), "nothing registered any more");
    }

    #[test]
    fn a_file_shorter_than_its_region_is_an_error() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"short").unwrap();
        let sf = Sendfile::new();
        let region = sf.push(Arc::new(f), 0, 50);
        let (out, _peer) = UnixStream::pair().unwrap();
        let tag = Sendfile::placeholder(region.chunk()).unwrap();
        assert_eq!(sf.send(tag, out.as_fd(), 100).unwrap(), 5);
        let err = sf.send(tag, out.as_fd(), 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
