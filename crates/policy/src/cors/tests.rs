use super::*;

fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
    let options = CorsOptions {
        origins: origins.iter().map(|s| (*s).to_owned()).collect(),
        credentials,
        ..CorsOptions::default()
    };
    CorsPolicy::new("frontend", &options).unwrap()
}

fn preflight_req(origin: &str, method: &str, headers: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
    h.insert(ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_str(method).unwrap());
    if let Some(list) = headers {
        h.insert(ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_str(list).unwrap());
    }
    h
}

fn apply(p: &CorsPolicy, origin: Option<&str>, resp: &mut HeaderMap) {
    let origin = origin.map(|o| HeaderValue::from_str(o).unwrap());
    p.apply(origin.as_ref(), resp);
}

fn vary(h: &HeaderMap) -> Vec<String> {
    h.get_all(VARY).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

#[test]
fn allowed_origin_with_credentials_is_echoed() {
    let p = policy(&["https://app.example.com"], true);
    let mut resp = HeaderMap::new();
    apply(&p, Some("https://app.example.com"), &mut resp);
    assert_eq!(resp[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
    assert_eq!(resp[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(vary(&resp), ["Origin"]);
}

#[test]
fn disallowed_origin_gets_no_cors_headers_but_vary() {
    let p = policy(&["https://app.example.com"], true);
    let mut resp = HeaderMap::new();
    apply(&p, Some("https://evil.example.net"), &mut resp);
    assert!(resp.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert!(resp.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    assert_eq!(vary(&resp), ["Origin"]);
    // No Origin at all: the answer still depends on it.
    let mut resp = HeaderMap::new();
    apply(&p, None, &mut resp);
    assert!(resp.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert_eq!(vary(&resp), ["Origin"]);
}

#[test]
fn upstream_cors_headers_are_replaced() {
    let p = policy(&["https://app.example.com"], true);
    let mut resp = HeaderMap::new();
    resp.insert(
        ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("https://evil.example.net"),
    );
    resp.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    apply(&p, Some("https://evil.example.net"), &mut resp);
    assert!(
        resp.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
        "a reflecting backend must not win"
    );
    assert!(resp.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
}

#[test]
fn vary_is_not_duplicated() {
    let p = policy(&["https://app.example.com"], false);
    let mut resp = HeaderMap::new();
    resp.insert(VARY, HeaderValue::from_static("Accept-Encoding, origin"));
    apply(&p, Some("https://app.example.com"), &mut resp);
    assert_eq!(vary(&resp), ["Accept-Encoding, origin"]);
    let mut resp = HeaderMap::new();
    resp.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    apply(&p, Some("https://app.example.com"), &mut resp);
    assert_eq!(vary(&resp), ["Accept-Encoding", "Origin"]);
}

#[test]
fn any_origin_without_credentials_is_star_without_vary() {
    let p = policy(&["*"], false);
    let mut resp = HeaderMap::new();
    apply(&p, Some("https://whoever.example"), &mut resp);
    assert_eq!(resp[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(resp.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    assert!(resp.get(VARY).is_none());
}

#[test]
fn star_with_credentials_is_a_config_error() {
    let options = CorsOptions {
        origins: vec!["*".into()],
        credentials: true,
        ..CorsOptions::default()
    };
    let e = CorsPolicy::new("frontend", &options).unwrap_err();
    assert!(e.to_string().contains("credentials"), "{e}");
    let options = CorsOptions {
        origins: vec!["https://a.example.com".into()],
        credentials: true,
        expose_headers: vec!["*".into()],
        ..CorsOptions::default()
    };
    assert!(CorsPolicy::new("frontend", &options).is_err());
}

#[test]
fn bad_origins_are_config_errors() {
    for bad in [
        "null",
        "app.example.com",
        "https://app.example.com/path",
        "https://*example.com",
        "https://a.*.example.com",
        "https://*.com",
        "*.example.com",
        "https://exa mple.com",
        "https://app.example.com:99999",
        "https://user@app.example.com",
    ] {
        let options = CorsOptions {
            origins: vec![bad.into()],
            ..CorsOptions::default()
        };
        assert!(CorsPolicy::new("p", &options).is_err(), "{bad} should be refused");
    }
    let options = CorsOptions {
        origins: vec![],
        ..CorsOptions::default()
    };
    assert!(CorsPolicy::new("p", &options).is_err());
}

#[test]
fn configured_origins_are_normalised() {
    let p = policy(&["HTTPS://App.Example.COM:443/", "http://localhost:5173"], false);
    assert!(p.allows_origin(b"https://app.example.com"));
    assert!(p.allows_origin(b"http://localhost:5173"));
    assert!(!p.allows_origin(b"http://localhost:5174"));
    assert!(!p.allows_origin(b"http://app.example.com"), "scheme matters");
    assert!(!p.allows_origin(b"https://app.example.com.evil.org"));
    assert!(!p.allows_origin(b"null"));
}

#[test]
fn wildcard_subdomains_match_one_label_and_no_suffix_tricks() {
    let p = policy(&["https://*.example.com"], true);
    assert!(p.allows_origin(b"https://a.example.com"));
    assert!(p.allows_origin(b"https://preview-42.example.com"));
    assert!(p.allows_origin(b"https://A.EXAMPLE.com"));
    for bad in [
        "https://example.com",
        "https://evil-example.com",
        "https://example.com.evil.org",
        "https://a.example.com.evil.org",
        "https://a.b.example.com",
        "https://.example.com",
        "http://a.example.com",
        "https://a.example.com:8443",
        "https://a.example.co",
        "https://a_b.example.com",
        "https://evil.org/.example.com",
    ] {
        assert!(!p.allows_origin(bad.as_bytes()), "{bad} must not match");
    }
    let with_port = policy(&["https://*.example.com:8443"], false);
    assert!(with_port.allows_origin(b"https://a.example.com:8443"));
    assert!(!with_port.allows_origin(b"https://a.example.com"));
    // An actual request from a wildcard match echoes that origin.
    let mut resp = HeaderMap::new();
    apply(&p, Some("https://a.example.com"), &mut resp);
    assert_eq!(resp[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example.com");
    let mut resp = HeaderMap::new();
    apply(&p, Some("https://evil-example.com"), &mut resp);
    assert!(resp.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[test]
fn preflight_allowed() {
    let p = policy(&["https://app.example.com"], true);
    let req = preflight_req("https://app.example.com", "PUT", Some("content-type, authorization"));
    let Some(Preflight::Allowed(h)) = p.preflight(&Method::OPTIONS, &req) else {
        panic!("not allowed")
    };
    assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
    assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, POST, PUT, PATCH, DELETE");
    assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "authorization, content-type");
    assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
    assert!(h[VARY].to_str().unwrap().starts_with("Origin"));
    let resp = Preflight::Allowed(h).into_response();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.body().is_empty());
}

#[test]
fn preflight_rejections() {
    let p = policy(&["https://app.example.com"], true);
    let cases = [
        (
            preflight_req("https://evil.example.net", "GET", None),
            Rejection::Origin,
        ),
        (
            preflight_req("https://app.example.com", "PROPFIND", None),
            Rejection::Method("PROPFIND".into()),
        ),
        (
            preflight_req("https://app.example.com", "POST", Some("content-type, x-secret")),
            Rejection::Header("x-secret".into()),
        ),
    ];
    for (req, want) in cases {
        match p.preflight(&Method::OPTIONS, &req) {
            Some(Preflight::Rejected(why)) => assert_eq!(why, want),
            other => panic!("expected rejection {want:?}, got {other:?}"),
        }
    }
    let resp = p
        .preflight(
            &Method::OPTIONS,
            &preflight_req("https://evil.example.net", "GET", None),
        )
        .unwrap()
        .into_response();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert!(resp.headers()[VARY].to_str().unwrap().contains("Origin"));
}

#[test]
fn not_a_preflight() {
    let p = policy(&["https://app.example.com"], false);
    let req = preflight_req("https://app.example.com", "GET", None);
    assert!(p.preflight(&Method::GET, &req).is_none(), "not OPTIONS");
    let mut plain_options = HeaderMap::new();
    plain_options.insert(ORIGIN, HeaderValue::from_static("https://app.example.com"));
    assert!(
        p.preflight(&Method::OPTIONS, &plain_options).is_none(),
        "no Access-Control-Request-Method"
    );
    assert!(p.preflight(&Method::OPTIONS, &HeaderMap::new()).is_none());
}

#[test]
fn any_header_is_echoed() {
    let options = CorsOptions {
        origins: vec!["https://app.example.com".into()],
        credentials: true,
        allow_headers: vec!["*".into()],
        methods: vec!["get".into(), "post".into()],
        expose_headers: vec!["X-Request-Id".into()],
        max_age: None,
    };
    let p = CorsPolicy::new("api", &options).unwrap();
    let req = preflight_req("https://app.example.com", "POST", Some("authorization, x-custom"));
    let Some(Preflight::Allowed(h)) = p.preflight(&Method::OPTIONS, &req) else {
        panic!("not allowed")
    };
    assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "authorization, x-custom");
    assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
    assert!(h.get(ACCESS_CONTROL_MAX_AGE).is_none());
    let mut resp = HeaderMap::new();
    apply(&p, Some("https://app.example.com"), &mut resp);
    assert_eq!(resp[ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
}
