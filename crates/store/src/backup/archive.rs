//! Byte-level helpers shared by writing and reading archives.

use std::io::{self, Read, Write};
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

use crate::digest::hex;

/// Counts and hashes everything written through it (the whole compressed archive).
pub(crate) struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the hex SHA-256 and the byte count.
    pub(crate) fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.written)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads exactly `len` bytes of a file into an archive entry while hashing them.
///
/// The tar header announces the size before the data, so a file that shrinks while it is
/// read must fail the entry instead of producing a malformed archive; a file that grows is
/// cut at `len`, and the manifest records the hash of what was archived.
pub(crate) struct ExactHashReader<R> {
    inner: R,
    remaining: u64,
    hasher: Sha256,
}

impl<R: Read> ExactHashReader<R> {
    pub(crate) fn new(inner: R, len: u64) -> Self {
        Self {
            inner,
            remaining: len,
            hasher: Sha256::new(),
        }
    }

    /// The hex SHA-256 of the bytes read.
    pub(crate) fn digest(self) -> String {
        hex(&self.hasher.finalize())
    }
}

impl<R: Read> Read for ExactHashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let cap = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..cap])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being backed up",
            ));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// True for a relative path made only of normal components (no `..`, no root, no `.`),
/// the only kind a restore will write.
pub(crate) fn is_safe_relative(path: &Path) -> bool {
    path.components().count() > 0 && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The archive path (`/`-separated) for `rel` under `prefix`, or `None` for a name that is
/// not valid UTF-8 (the manifest is JSON).
pub(crate) fn archive_path(prefix: &str, rel: &Path) -> Option<String> {
    let mut out = prefix.to_owned();
    for component in rel.components() {
        let Component::Normal(part) = component else {
            return None;
        };
        out.push('/');
        out.push_str(part.to_str()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        assert!(is_safe_relative(Path::new("data/a/b.pem")));
        for bad in ["/etc/passwd", "data/../x", "", "./data"] {
            assert!(!is_safe_relative(Path::new(bad)), "{bad}");
        }
    }

    #[test]
    fn exact_reader_rejects_short_files() {
        let mut r = ExactHashReader::new(&b"abc"[..], 5);
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut r = ExactHashReader::new(&b"abcdef"[..], 3);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(r.digest(), crate::digest::sha256_hex(b"abc"));
    }
}
