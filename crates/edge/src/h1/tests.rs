use super::*;

fn head(raw: &str) -> ParsedHead {
    let mut buf = BytesMut::from(raw.as_bytes());
    parse_head(&mut buf).unwrap().expect("complete head")
}

fn framing_of(method: Method, raw: &str) -> Result<(Framing, bool), ExchangeError> {
    framing(&method, &mut head(raw))
}

#[test]
fn a_head_arriving_in_pieces_parses_once_complete() {
    let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello";
    for split in 1..full.len() - 5 {
        let mut buf = BytesMut::from(&full[..split]);
        assert!(parse_head(&mut buf).unwrap().is_none(), "split at {split}");
        assert_eq!(&buf[..], &full[..split], "a partial head is left in place");
        buf.extend_from_slice(&full[split..]);
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(&h.rest[..], b"hello");
        assert!(buf.is_empty());
    }
}

#[test]
fn bad_heads_are_errors() {
    for raw in [
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        // A folded line (obs-fold) would put CR LF inside a value, which is
        // passed to clients as it is (`fields.rs`): refused.
        "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\r\n\tb\r\n\r\n",
        "garbage\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(raw.as_bytes());
        assert!(parse_head(&mut buf).is_err(), "{raw:?}");
    }
    let mut many = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("x-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(parse_head(&mut BytesMut::from(many.as_bytes())).is_err());
    let mut huge = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx: "[..]);
    huge.extend_from_slice(&vec![b'a'; MAX_HEAD]);
    assert!(matches!(parse_head(&mut huge), Err(ExchangeError::HeadTooLarge)));
}

#[test]
fn framing_follows_rfc_9112() {
    use Framing::*;
    let ok = "HTTP/1.1 200 OK\r\n";
    assert_eq!(
        framing_of(Method::GET, &format!("{ok}Content-Length: 12\r\n\r\n")).unwrap(),
        (Length(12), true)
    );
    assert_eq!(
        framing_of(Method::HEAD, &format!("{ok}Content-Length: 12\r\n\r\n")).unwrap(),
        (Done, true)
    );
    assert_eq!(
        framing_of(Method::GET, "HTTP/1.1 204 No Content\r\n\r\n").unwrap(),
        (Done, true)
    );
    assert_eq!(
        framing_of(Method::GET, "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").unwrap(),
        (Done, true)
    );
    assert_eq!(
        framing_of(Method::GET, &format!("{ok}Content-Length: 0\r\n\r\n")).unwrap(),
        (Done, true)
    );
    // Repeated, agreeing lengths are one length; disagreeing ones are refused.
    assert_eq!(
        framing_of(
            Method::GET,
            &format!("{ok}Content-Length: 3, 3\r\nContent-Length: 3\r\n\r\n")
        )
        .unwrap(),
        (Length(3), true)
    );
    assert!(
        framing_of(
            Method::GET,
            &format!("{ok}Content-Length: 3\r\nContent-Length: 4\r\n\r\n")
        )
        .is_err()
    );
    assert!(framing_of(Method::GET, &format!("{ok}Content-Length: -1\r\n\r\n")).is_err());
    assert!(framing_of(Method::GET, &format!("{ok}Content-Length: 1e3\r\n\r\n")).is_err());
    assert!(
        framing_of(
            Method::GET,
            &format!("{ok}Content-Length: 99999999999999999999\r\n\r\n")
        )
        .is_err()
    );
    // Chunked wins over a length, and such a connection is not reused.
    let mut h = head(&format!("{ok}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"));
    assert_eq!(
        framing(&Method::GET, &mut h).unwrap(),
        (Chunked(super::Chunked::Size), false)
    );
    assert!(!h.headers().contains_key(header::CONTENT_LENGTH));
    assert_eq!(
        framing_of(Method::GET, &format!("{ok}Transfer-Encoding: gzip, chunked\r\n\r\n")).unwrap(),
        (Chunked(super::Chunked::Size), true)
    );
    // A coding other than chunked last: read until close.
    assert_eq!(
        framing_of(Method::GET, &format!("{ok}Transfer-Encoding: gzip\r\n\r\n")).unwrap(),
        (UntilClose, false)
    );
    assert_eq!(
        framing_of(Method::GET, &format!("{ok}\r\n")).unwrap(),
        (UntilClose, false)
    );
    // Connection: close and HTTP/1.0 end the connection after this response.
    assert_eq!(
        framing_of(
            Method::GET,
            &format!("{ok}Connection: keep-alive, Close\r\nContent-Length: 1\r\n\r\n")
        )
        .unwrap(),
        (Length(1), false)
    );
    assert_eq!(
        framing_of(Method::GET, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap(),
        (Length(1), false)
    );
}

/// Decodes `input` fed `step` bytes at a time; the data and whether the end was seen.
fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, bool), ExchangeError> {
    let mut state = Chunked::Size;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match state.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::NeedMore => break,
                Decoded::End => return Ok((out, true)),
            }
        }
    }
    Ok((out, false))
}

#[test]
fn chunked_bodies_decode_whatever_the_read_sizes() {
    let body = b"5\r\nhello\r\n6;ext=\"x\"\r\n world\r\nA \r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
    for step in [1, 2, 3, 7, 64, body.len()] {
        let (data, end) = decode_in_steps(body, step).unwrap();
        assert_eq!(data, b"hello world0123456789", "step {step}");
        assert!(end);
    }
    let (data, end) = decode_in_steps(b"3\r\nabc\r\n", 1).unwrap();
    assert_eq!((data.as_slice(), end), (&b"abc"[..], false));
}

#[test]
fn broken_chunked_bodies_are_errors() {
    for bad in [
        &b"x\r\nabc\r\n"[..],
        b"3\nabc\r\n0\r\n\r\n",
        b"3\r\nabcd\r\n",
        b"-3\r\nabc\r\n",
        b"3 x\r\nabc\r\n",
        b"11111111111111111\r\n",
        b"0\r\nx: y\n\r\n",
    ] {
        assert!(decode_in_steps(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let long_line = [b"1;".as_slice(), &vec![b'a'; MAX_CHUNK_LINE + 1]].concat();
    assert!(decode_in_steps(&long_line, 100).is_err());
    let mut trailers = b"0\r\n".to_vec();
    for _ in 0..2000 {
        trailers.extend_from_slice(b"x-trailer: 12345\r\n");
    }
    assert!(decode_in_steps(&trailers, 512).is_err());
}

#[test]
fn chunk_sizes_are_hex_with_optional_extensions() {
    assert_eq!(chunk_size(b"ff"), Some(255));
    assert_eq!(chunk_size(b"FF ; name=value"), Some(255));
    assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
    assert_eq!(chunk_size(b""), None);
    assert_eq!(chunk_size(b";ext"), None);
    assert_eq!(chunk_size(b"1 2"), None);
}

#[test]
fn hex_and_decimal_helpers() {
    for n in [0u64, 1, 15, 16, 255, 4096, u64::MAX] {
        let mut out = Vec::new();
        write_hex(&mut out, n);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{n:x}"));
    }
    assert_eq!(parse_decimal(b"0"), Some(0));
    assert_eq!(parse_decimal(b"18446744073709551615"), None);
    assert_eq!(parse_decimal(b"1234567890123456789"), Some(1_234_567_890_123_456_789));
    assert_eq!(parse_decimal(b"+1"), None);
}

#[test]
fn hop_by_hop_fields_stay_out_of_the_answer() {
    let h = head(
        "HTTP/1.1 200 OK\r\nX-Before: 1\r\nConnection: keep-alive, X-Before, X-After\r\nKeep-Alive: timeout=5\r\n\
         Upgrade: h2c\r\nProxy-Connection: x\r\nTE: trailers\r\nX-After: 2\r\nX-Kept: 3\r\nContent-Length: 0\r\n\r\n",
    );
    let map = h.headers();
    let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-length", "x-kept"]);
    // A 101 keeps them for the client, which needs Connection and Upgrade.
    let h = head("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Other: 1\r\n\r\n");
    assert_eq!(h.headers().len(), 3);
    assert_eq!(h.headers()["upgrade"], "websocket");
    // Connection cannot remove the length the framing relies on.
    let mut h = head("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(framing(&Method::GET, &mut h).unwrap(), (Framing::Length(2), true));
    assert_eq!(h.headers()["content-length"], "2");
}

#[test]
fn names_remembered_from_earlier_answers_never_change_what_is_read() {
    fn read(names: &mut FieldNames, raw: &str) -> Result<http::HeaderMap, ExchangeError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_head_with(&mut buf, names).map(|h| h.expect("complete head").headers())
    }
    let mut names = FieldNames::default();
    let first = read(
        &mut names,
        "HTTP/1.1 200 OK\r\nServer: a\r\nX-Custom: 1\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    let again = read(
        &mut names,
        "HTTP/1.1 200 OK\r\nServer: a\r\nX-Custom: 1\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(first, again);
    assert_eq!(again.get("x-custom").unwrap(), "1");
    // Other names, and other spellings, at the same positions.
    let other = read(
        &mut names,
        "HTTP/1.1 200 OK\r\nX-Other: 2\r\nSERVER: b\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(other.get("x-other").unwrap(), "2");
    assert_eq!(other.get("server").unwrap(), "b");
    assert!(other.get("x-custom").is_none(), "{other:?}");
    // A bad name where a good one was remembered is still an error.
    assert!(read(&mut names, "HTTP/1.1 200 OK\r\nX Other: 2\r\n\r\n").is_err());
    // Longer heads than are remembered read the same.
    let long: String = (0..40).map(|i| format!("x-{i}: {i}\r\n")).collect();
    for _ in 0..2 {
        let h = read(&mut names, &format!("HTTP/1.1 200 OK\r\n{long}\r\n")).unwrap();
        assert_eq!(h.len(), 40);
        assert_eq!(h.get("x-39").unwrap(), "39");
    }
    assert_eq!(names.0.len(), REMEMBERED_NAMES);
    // Long names are read but not kept.
    let long_name = "x".repeat(REMEMBERED_NAME_LEN + 1);
    let h = read(&mut names, &format!("HTTP/1.1 200 OK\r\n{long_name}: 1\r\n\r\n")).unwrap();
    assert_eq!(h.get(long_name.as_str()).unwrap(), "1");
    assert!(names.0.iter().all(|(raw, _)| raw.len() <= REMEMBERED_NAME_LEN));
}
