//! The socket of a plain-HTTP client connection, able to send file regions
//! with `sendfile(2)`.
//!
//! Static responses on HTTP/1 connections without TLS hand their file ranges
//! to the connection's [`Sendfile`] queue and yield placeholders (see
//! `gatehouse_files::Sendfile`). hyper writes a response as a vector of
//! slices; this stream writes ordinary slices with `writev` and, on reaching a
//! placeholder, sends the registered file range straight from the page cache
//! to the socket, so file bytes never pass through user space.
//!
//! While a region is being sent the socket is corked (`TCP_CORK`, as nginx's
//! `tcp_nopush`): the response head and the file's bytes leave in full-sized
//! segments instead of a small packet per write, which halves the receiver's
//! per-packet work on large files. The cork comes off as soon as the region is
//! done, so the end of the response is not held back.

use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use gatehouse_files::Sendfile;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A client TCP stream plus the connection's queue of file regions.
#[derive(Debug)]
pub(crate) struct ZeroCopyStream {
    stream: TcpStream,
    queue: Sendfile,
    /// `TCP_CORK` is set (a region is being sent).
    corked: bool,
}

impl ZeroCopyStream {
    pub(crate) fn new(stream: TcpStream, queue: Sendfile) -> Self {
        Self {
            stream,
            queue,
            corked: false,
        }
    }

    /// Sets or clears `TCP_CORK`. Best effort: without it, data still flows,
    /// in more packets.
    fn cork(&mut self, on: bool) {
        if self.corked != on {
            self.corked = on;
            let _ = socket2::SockRef::from(&self.stream).set_tcp_cork(on);
        }
    }

    /// Sends up to `max` bytes of the region tagged `tag`.
    fn poll_send(&mut self, cx: &mut Context<'_>, tag: usize, max: usize) -> Poll<io::Result<usize>> {
        self.cork(true);
        let result = loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let stream = &self.stream;
            match stream.try_io(Interest::WRITABLE, || self.queue.send(tag, stream.as_fd(), max)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => break res,
            }
        };
        if result.is_err() || !self.queue.is_pending(tag) {
            self.cork(false);
        }
        Poll::Ready(result)
    }
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Sendfile::placeholder(buf) {
            Some(tag) => this.poll_send(cx, tag, buf.len()),
            None => Pin::new(&mut this.stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Ordinary slices up to the first placeholder go out in one writev; a
        // placeholder at the front is sent from its file.
        match bufs.iter().position(|b| Sendfile::placeholder(b).is_some()) {
            None => Pin::new(&mut this.stream).poll_write_vectored(cx, bufs),
            Some(0) => match Sendfile::placeholder(&bufs[0]) {
                Some(tag) => this.poll_send(cx, tag, bufs[0].len()),
                None => Poll::Ready(Err(io::Error::other("placeholder vanished"))),
            },
            Some(i) => {
                // The head before a file region waits in the corked socket
                // and leaves with the region's first bytes.
                this.cork(true);
                Pin::new(&mut this.stream).poll_write_vectored(cx, &bufs[..i])
            }
        }
    }

    /// Always true: hyper must queue body chunks as they are (its flattening
    /// strategy would copy a placeholder's zeros instead of the file).
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use bytes::Buf;
    use gatehouse_files::{Chunk, StaticOptions, StaticService};
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes `chunks` the way hyper does: vectored, head and body slices together.
    async fn write_like_hyper(out: &mut ZeroCopyStream, mut chunks: Vec<Chunk>) {
        while chunks.iter().any(Buf::has_remaining) {
            let n = {
                let slices: Vec<IoSlice<'_>> = chunks
                    .iter()
                    .filter(|c| c.has_remaining())
                    .map(|c| IoSlice::new(c.chunk()))
                    .collect();
                out.write_vectored(&slices).await.unwrap()
            };
            let mut left = n;
            for c in chunks.iter_mut().filter(|c| c.has_remaining()) {
                let step = left.min(c.chunk().len());
                c.advance(step);
                left -= step;
                if left == 0 {
                    break;
                }
            }
        }
        out.flush().await.unwrap();
    }

    #[tokio::test]
    async fn file_regions_are_sent_from_the_file_between_ordinary_bytes() {
        let dir = std::env::temp_dir().join(format!("gh-zerocopy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        std::fs::write(dir.join("big.bin"), &data).unwrap();
        let mut opts = StaticOptions::dir(&dir);
        opts.memory_file_max = 0;
        opts.compress = false;
        let files = StaticService::new(opts).unwrap();

        let queue = Sendfile::new();
        let resp = files
            .serve(&http::Method::GET, "/big.bin", &http::HeaderMap::new())
            .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        assert!(body.use_sendfile(&queue));
        let mut chunks = vec![Chunk::Bytes(bytes::Bytes::from_static(b"HEAD\r\n"))];
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            assert!(
                Sendfile::placeholder(chunk.chunk()).is_some(),
                "a file part was read into memory"
            );
            chunks.push(chunk);
        }
        chunks.push(Chunk::Bytes(bytes::Bytes::from_static(b"TAIL")));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let writer = tokio::spawn(async move {
            let mut out = ZeroCopyStream::new(server, queue);
            write_like_hyper(&mut out, chunks).await;
            // Corked only while regions were going out: nothing written after
            // them may wait in the socket.
            let corked = socket2::SockRef::from(&out.stream).tcp_cork().unwrap();
            assert!(!corked && !out.corked, "the socket is still corked");
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(&got[..6], b"HEAD\r\n");
        assert_eq!(&got[got.len() - 4..], b"TAIL");
        assert!(got[6..got.len() - 4] == data[..], "file bytes differ");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_placeholder_without_a_registered_region_fails_the_write() {
        let queue = Sendfile::new();
        let other = Sendfile::new();
        let dir = std::env::temp_dir().join(format!("gh-zerocopy-orphan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f.bin"), vec![7u8; 1 << 20]).unwrap();
        let mut opts = StaticOptions::dir(&dir);
        opts.memory_file_max = 0;
        let files = StaticService::new(opts).unwrap();
        let mut body = files
            .serve(&http::Method::GET, "/f.bin", &http::HeaderMap::new())
            .await
            .into_body();
        // Registered with another connection's queue: this writer must refuse
        // it rather than send the placeholder's zeros.
        assert!(body.use_sendfile(&other));
        let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut out = ZeroCopyStream::new(server, queue);
        let err = out.write(chunk.chunk()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
