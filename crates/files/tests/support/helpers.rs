//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use bytes::Bytes;
use gatehouse_files::{FileBody, StaticOptions, StaticService};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;

/// A response with its body collected.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub frames: usize,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn collect(resp: Response<FileBody>) -> Got {
    let (parts, mut body) = resp.into_parts();
    let mut buf = Vec::new();
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body error");
        if let Ok(data) = frame.into_data() {
            frames += 1;
            let gatehouse_files::Chunk::Bytes(data) = data else {
                panic!("a file region without sendfile");
            };
            buf.extend_from_slice(&data);
        }
    }
    Got {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(buf),
        frames,
    }
}

pub async fn req(svc: &StaticService, method: Method, uri: &str, headers: &[(&str, &str)]) -> Got {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let got = collect(svc.serve(&method, uri, &h).await).await;
    // Whatever the response, Content-Length (when set) matches a GET body.
    if method == Method::GET {
        if let Some(len) = got.header("content-length") {
            assert_eq!(len.parse::<usize>().unwrap(), got.body.len(), "{uri}: content-length");
        }
    }
    got
}

pub async fn get(svc: &StaticService, uri: &str) -> Got {
    req(svc, Method::GET, uri, &[]).await
}

pub async fn get_with(svc: &StaticService, uri: &str, headers: &[(&str, &str)]) -> Got {
    req(svc, Method::GET, uri, headers).await
}

pub fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

pub fn service(opts: StaticOptions) -> StaticService {
    StaticService::new(opts).unwrap()
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Compressible text of about `len` bytes.
pub fn text(len: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < len {
        s.push_str(&format!("export const value{i} = \"item number {i}\";\n"));
        i += 1;
    }
    s
}
