//! [`FileBody`]: the response body of a static route.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::sync::Arc;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::sendfile::{Chunk, Sendfile};

/// Bytes read from disk per blocking call. 64 KiB matches the kernel's default
/// readahead and hyper's write buffer, so one chunk is one socket write.
pub const READ_CHUNK: u64 = 64 * 1024;

/// Later chunks of a large file are read 256 KiB at a time: fewer hops to the
/// blocking pool once the transfer is clearly a bulk one.
const READ_CHUNK_BULK: u64 = 256 * 1024;

/// A streaming response body: empty, one in-memory buffer, or a sequence of
/// in-memory parts and file ranges (used for large files and
/// `multipart/byteranges`). Large files are never buffered whole: file ranges
/// are read in [`READ_CHUNK`]s on tokio's blocking pool, or, after
/// [`FileBody::use_sendfile`], handed to the connection as zero-copy regions.
///
/// The file handle is opened before the response is built, so a download keeps
/// reading the same file even if a release switch or prune happens meanwhile.
/// If the file shrinks under us the body ends with an error (the connection is
/// then closed, as Content-Length can no longer be honoured).
#[derive(Debug)]
pub struct FileBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Full(Option<Bytes>),
    /// In-memory bytes that are also a range of an open file, so that
    /// [`FileBody::use_sendfile`] can send them from the page cache instead.
    Cached(Option<Box<Cached>>),
    Stream(Box<Stream>),
}

#[derive(Debug)]
struct Cached {
    bytes: Bytes,
    file: Arc<File>,
    offset: u64,
}

#[derive(Debug)]
pub(crate) enum Part {
    Bytes(Bytes),
    File { offset: u64, len: u64 },
}

type ReadResult = (File, u64, io::Result<Bytes>);

#[derive(Debug)]
struct Stream {
    parts: VecDeque<Part>,
    file: Option<File>,
    /// Where the file's cursor is, to skip needless seeks.
    pos: u64,
    remaining: u64,
    reads: u32,
    reading: Option<JoinHandle<ReadResult>>,
    /// Set by [`FileBody::use_sendfile`]: file ranges become regions of this
    /// queue, sent from `shared`.
    sendfile: Option<(Sendfile, Arc<File>)>,
}

impl FileBody {
    /// A body with no bytes (HEAD, 304, redirects).
    pub fn empty() -> Self {
        FileBody { kind: Kind::Empty }
    }

    /// A body of one in-memory buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Self::empty();
        }
        FileBody {
            kind: Kind::Full(Some(bytes)),
        }
    }

    /// A body of in-memory `bytes` that are `file`'s bytes from `offset`:
    /// written from memory, or as a zero-copy region after
    /// [`FileBody::use_sendfile`].
    pub(crate) fn cached(bytes: Bytes, file: Arc<File>, offset: u64) -> Self {
        if bytes.is_empty() {
            return Self::empty();
        }
        FileBody {
            kind: Kind::Cached(Some(Box::new(Cached { bytes, file, offset }))),
        }
    }

    /// A body of parts; `file` must be given when a part is a file range.
    pub(crate) fn parts(parts: Vec<Part>, file: Option<File>) -> Self {
        let remaining = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len() as u64,
                Part::File { len, .. } => *len,
            })
            .sum();
        FileBody {
            kind: Kind::Stream(Box::new(Stream {
                parts: parts.into(),
                file,
                pos: u64::MAX,
                remaining,
                reads: 0,
                reading: None,
                sendfile: None,
            })),
        }
    }

    /// Sends this body's file ranges as zero-copy regions through `queue`,
    /// which must belong to the HTTP/1 connection the body is written to (see
    /// [`Sendfile`]). Does nothing for in-memory bodies or once reading has
    /// started. Returns whether the body now uses the queue.
    pub fn use_sendfile(&mut self, queue: &Sendfile) -> bool {
        if !Sendfile::supported() {
            return false;
        }
        if let Kind::Cached(cached) = &mut self.kind {
            let Some(c) = cached.take() else {
                return false;
            };
            let len = c.bytes.len() as u64;
            self.kind = Kind::Stream(Box::new(Stream {
                parts: VecDeque::from([Part::File { offset: c.offset, len }]),
                file: None,
                pos: u64::MAX,
                remaining: len,
                reads: 0,
                reading: None,
                sendfile: Some((queue.clone(), c.file)),
            }));
            return true;
        }
        let Kind::Stream(s) = &mut self.kind else {
            return false;
        };
        if s.sendfile.is_some() || s.reading.is_some() || s.reads > 0 {
            return s.sendfile.is_some();
        }
        let Some(file) = s.file.take() else {
            return false;
        };
        s.sendfile = Some((queue.clone(), Arc::new(file)));
        true
    }
}

impl Default for FileBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for FileBody {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

impl Body for FileBody {
    type Data = Chunk;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Chunk>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(Chunk::Bytes(b))))),
            Kind::Cached(c) => Poll::Ready(c.take().map(|c| Ok(Frame::data(Chunk::Bytes(c.bytes))))),
            Kind::Stream(s) => s.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Cached(c) => c.is_none(),
            Kind::Stream(s) => s.remaining == 0 && s.reading.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Cached(c) => SizeHint::with_exact(c.as_ref().map_or(0, |c| c.bytes.len() as u64)),
            Kind::Stream(s) => SizeHint::with_exact(s.remaining),
        }
    }
}

impl Stream {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Chunk>>>> {
        loop {
            if let Some(handle) = &mut self.reading {
                let joined = ready!(Pin::new(handle).poll(cx));
                self.reading = None;
                return Poll::Ready(Some(match joined {
                    Ok((file, pos, Ok(bytes))) => {
                        self.file = Some(file);
                        self.pos = pos;
                        self.remaining -= bytes.len() as u64;
                        Ok(Frame::data(Chunk::Bytes(bytes)))
                    }
                    Ok((_, _, Err(e))) => Err(self.fail(e)),
                    Err(join) => Err(self.fail(io::Error::other(join))),
                }));
            }
            let Some(part) = self.parts.front_mut() else {
                return Poll::Ready(None);
            };
            match part {
                Part::Bytes(_) => {
                    let Some(Part::Bytes(b)) = self.parts.pop_front() else {
                        continue;
                    };
                    self.remaining -= b.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(Chunk::Bytes(b)))));
                }
                Part::File { len: 0, .. } => {
                    self.parts.pop_front();
                }
                Part::File { offset, len } if self.sendfile.is_some() => {
                    let (offset, len) = (*offset, *len);
                    self.parts.pop_front();
                    self.remaining -= len;
                    if let Some((queue, file)) = &self.sendfile {
                        return Poll::Ready(Some(Ok(Frame::data(queue.push(file.clone(), offset, len)))));
                    }
                }
                Part::File { offset, len } => {
                    let Some(mut file) = self.file.take() else {
                        return Poll::Ready(Some(
                            Err(self.fail(io::Error::other("file body without a file handle"))),
                        ));
                    };
                    let chunk = if self.reads == 0 { READ_CHUNK } else { READ_CHUNK_BULK };
                    let n = (*len).min(chunk);
                    let at = *offset;
                    *offset += n;
                    *len -= n;
                    self.reads += 1;
                    let pos = self.pos;
                    // The buffer is allocated here, on the serving thread, so it is
                    // also freed by the thread that allocated it: with per-thread
                    // allocator heaps, buffers allocated on short-lived blocking
                    // threads were retained there (gigabytes under load).
                    // n <= READ_CHUNK_BULK, so it fits in usize on every platform.
                    let buf = vec![0u8; n as usize];
                    self.reading = Some(tokio::task::spawn_blocking(move || {
                        let res = read_at(&mut file, pos, at, buf);
                        (file, at + n, res)
                    }));
                }
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        self.parts.clear();
        self.remaining = 0;
        self.file = None;
        self.sendfile = None;
        e
    }
}

fn read_at(file: &mut File, pos: u64, at: u64, mut buf: Vec<u8>) -> io::Result<Bytes> {
    if pos != at {
        file.seek(SeekFrom::Start(at))?;
    }
    file.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}
