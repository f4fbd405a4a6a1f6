//! Test data: incompressible bytes and release archives.

use std::io::Write;

/// `len` pseudo-random bytes that gzip (or any compressor) cannot shrink,
/// the same for every call.
pub fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tar.gz archive of regular files (`(path, contents)`), as a deploy
/// upload would carry.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, *data).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A body stream of `total` bytes of `byte`, in frames of `chunk` bytes,
/// produced as it is read (nothing is held but one shared chunk).
pub fn frames<E: Send + 'static>(
    total: u64,
    chunk: usize,
    byte: u8,
) -> impl futures_util::Stream<Item = Result<hyper::body::Frame<bytes::Bytes>, E>> + Send + 'static {
    let block = bytes::Bytes::from(vec![byte; chunk]);
    futures_util::stream::unfold(total, move |left| {
        let block = block.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(block.len() as u64);
            Some((Ok(hyper::body::Frame::data(block.slice(..n as usize))), left - n))
        }
    })
}
