//! On-the-fly compression: bounded in concurrency, results cached by
//! (identity ETag, coding).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::encoding::Encoding;

/// Brotli quality 5: within a few percent of gzip -9's size or better, at
/// gzip -6 speed; 11 would be ~50× slower for ~10 % less.
const BROTLI_QUALITY: u32 = 5;
/// Brotli window (log2): 22 = 4 MiB, the library default.
const BROTLI_LGWIN: u32 = 22;
/// zstd level 6: better than gzip -9 at a fraction of its time.
const ZSTD_LEVEL: i32 = 6;
/// gzip level 6: zlib's default trade-off.
const GZIP_LEVEL: u32 = 6;
/// A result that saves less than 1/16 of the input is not worth a coding:
/// remember that and send identity.
const MIN_SAVING_SHIFT: u32 = 4;

type Key = (Bytes, Encoding);

/// Cached result: `None` means "does not compress, send identity".
type Entry = Option<Bytes>;

pub(crate) struct Compressor {
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    budget: u64,
}

#[derive(Default)]
struct State {
    map: HashMap<Key, Entry>,
    order: VecDeque<Key>,
    bytes: u64,
    in_flight: HashSet<Key>,
}

/// What [`Compressor::get`] found.
pub(crate) enum Compressed {
    /// The coded bytes.
    Ready(Bytes),
    /// This coding does not pay for this file; send something else.
    NotWorth,
    /// Busy (at the concurrency limit, or this variant is being made): send
    /// something else this time.
    Busy,
}

impl Compressor {
    pub(crate) fn new(concurrency: usize, budget: u64) -> Self {
        Compressor {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            state: Mutex::new(State::default()),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters (worst case a stale in-flight key), so go on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached result for `etag` in `enc`, if any, without compressing.
    pub(crate) fn cached(&self, etag: &Bytes, enc: Encoding) -> Option<Compressed> {
        let st = self.lock();
        st.map.get(&(etag.clone(), enc)).map(|e| match e {
            Some(b) => Compressed::Ready(b.clone()),
            None => Compressed::NotWorth,
        })
    }

    /// Compress `source()` (run on the blocking pool) into `enc`, or return
    /// the cached result. Never waits for a permit: when all are taken the
    /// answer is [`Compressed::Busy`].
    pub(crate) async fn get<F>(&self, etag: Bytes, enc: Encoding, source: F) -> Compressed
    where
        F: FnOnce() -> io::Result<Bytes> + Send + 'static,
    {
        if let Some(c) = self.cached(&etag, enc) {
            return c;
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return Compressed::Busy;
        };
        let key = (etag, enc);
        if !self.lock().in_flight.insert(key.clone()) {
            return Compressed::Busy;
        }
        let _guard = InFlight {
            compressor: self,
            key: key.clone(),
        };
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let input = source()?;
            let out = compress(&input, enc)?;
            Ok::<_, io::Error>(
                (out.len() as u64 + (input.len() as u64 >> MIN_SAVING_SHIFT) < input.len() as u64)
                    .then(|| Bytes::from(out)),
            )
        })
        .await;
        let entry = match joined {
            Ok(Ok(entry)) => entry,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, coding = enc.token(), "Compression failed.");
                return Compressed::Busy;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Compression task failed.");
                return Compressed::Busy;
            }
        };
        self.insert(key, entry.clone());
        match entry {
            Some(b) => Compressed::Ready(b),
            None => Compressed::NotWorth,
        }
    }

    fn insert(&self, key: Key, entry: Entry) {
        let size = entry.as_ref().map_or(0, |b| b.len() as u64) + key.0.len() as u64;
        if size > self.budget / 4 {
            return;
        }
        let mut st = self.lock();
        while st.bytes + size > self.budget {
            let Some(old) = st.order.pop_front() else { break };
            if let Some(e) = st.map.remove(&old) {
                st.bytes -= e.as_ref().map_or(0, |b| b.len() as u64) + old.0.len() as u64;
            }
        }
        if st.map.insert(key.clone(), entry).is_none() {
            st.order.push_back(key);
            st.bytes += size;
        }
    }
}

struct InFlight<'a> {
    compressor: &'a Compressor,
    key: Key,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.compressor.lock().in_flight.remove(&self.key);
    }
}

/// Compress a whole buffer.
pub(crate) fn compress(input: &[u8], enc: Encoding) -> io::Result<Vec<u8>> {
    match enc {
        Encoding::Brotli => {
            let mut w =
                brotli::CompressorWriter::new(Vec::with_capacity(input.len() / 3), 4096, BROTLI_QUALITY, BROTLI_LGWIN);
            w.write_all(input)?;
            w.flush()?;
            Ok(w.into_inner())
        }
        Encoding::Zstd => zstd::bulk::compress(input, ZSTD_LEVEL),
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(
                Vec::with_capacity(input.len() / 3),
                flate2::Compression::new(GZIP_LEVEL),
            );
            w.write_all(input)?;
            w.finish()
        }
        Encoding::Identity => Ok(input.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn key() -> Bytes {
        Bytes::from_static(b"\"etag\"")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_instead_of_queueing_and_cached_after() {
        let c = Arc::new(Compressor::new(1, 1 << 20));
        let text = Bytes::from("hello hello hello hello hello hello ".repeat(200));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let slow = {
            let (c, text) = (Arc::clone(&c), text.clone());
            tokio::spawn(async move {
                c.get(key(), Encoding::Gzip, move || {
                    let _ = rx.recv();
                    Ok(text)
                })
                .await
            })
        };
        // Wait until the first compression holds the only permit.
        while !c.lock().in_flight.contains(&(key(), Encoding::Gzip)) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Another coding: no permit left → Busy, without waiting.
        let t = text.clone();
        assert!(matches!(
            c.get(key(), Encoding::Brotli, move || Ok(t)).await,
            Compressed::Busy
        ));
        tx.send(()).unwrap();
        let Compressed::Ready(gz) = slow.await.unwrap() else {
            panic!("expected a result")
        };
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, text);
        // Cached: the source is not called again.
        let cached = c
            .get(key(), Encoding::Gzip, || Err(io::Error::other("must not run")))
            .await;
        assert!(matches!(cached, Compressed::Ready(b) if b == gz));
    }

    #[tokio::test]
    async fn incompressible_is_remembered_and_budget_holds() {
        let c = Compressor::new(2, 64 * 1024);
        let mut rng = fastrand::Rng::with_seed(1);
        let noise: Vec<u8> = (0..20_000).map(|_| rng.u8(..)).collect();
        let n = Bytes::from(noise);
        let r = c.get(key(), Encoding::Brotli, move || Ok(n)).await;
        assert!(matches!(r, Compressed::NotWorth));
        assert!(matches!(c.cached(&key(), Encoding::Brotli), Some(Compressed::NotWorth)));
        for i in 0..50u32 {
            let text = Bytes::from(format!("{i} lorem ipsum dolor sit amet ").repeat(300));
            let _ = c
                .get(Bytes::from(i.to_string()), Encoding::Gzip, move || Ok(text))
                .await;
        }
        assert!(c.lock().bytes <= 64 * 1024);
    }
}
