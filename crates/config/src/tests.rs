use std::path::Path;

use super::*;

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    parse_with_env(text, Path::new("/etc/gatehouse/test.toml"), &move |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

fn ok(text: &str) -> Config {
    match parse_env(text, &[]) {
        Ok(c) => c,
        Err(e) => panic!("expected valid config, got: {e}"),
    }
}

/// Asserts the error's line, column, key path and a fragment of the message.
fn fails(text: &str, line: usize, col: usize, key: &str, fragment: &str) -> ConfigError {
    let e = match parse_env(text, &[]) {
        Ok(_) => panic!("expected an error containing {fragment:?}"),
        Err(e) => e,
    };
    let shown = e.to_string();
    assert_eq!(e.position(), Some((line, col)), "position of: {shown}");
    assert_eq!(e.key(), key, "key of: {shown}");
    assert!(shown.contains(fragment), "{shown:?} should contain {fragment:?}");
    assert!(
        shown.starts_with(&format!("/etc/gatehouse/test.toml:{line}:{col}: ")),
        "{shown}"
    );
    e
}

const BASE: &str = r#"
[upstream.api]
targets = ["127.0.0.1:8000", "[::1]:8001", "api.internal:80"]

[[site]]
hosts = ["app.example.com", "*.example.org"]
  [[site.route]]
  path = "/api/"
  upstream = "api"
  strip_prefix = true
  [[site.route]]
  path = "/old"
  redirect = { to = "https://new.example.com", status = 301, keep_path = true }
  [[site.route]]
  path = "/"
  methods = ["get", "HEAD"]
  respond = { status = 200, body = "hello" }
"#;

#[test]
fn valid_config_converts_to_typed_model() {
    let c = ok(BASE);
    assert_eq!(c.server.http, vec!["0.0.0.0:8080".parse().unwrap()]);
    assert_eq!(c.server.data_dir, Path::new("/etc/gatehouse/data"));
    assert_eq!(c.upstreams.len(), 1);
    let up = &c.upstreams[0];
    assert_eq!(up.targets[1].authority.as_str(), "[::1]:8001");
    assert_eq!(up.targets[1].host, "::1");
    assert_eq!(up.targets[2].port, 80);
    let site = &c.sites[0];
    assert_eq!(site.hosts[1], HostPattern::Wildcard(".example.org".into()));
    match &site.routes[0].action {
        Action::Proxy(p) => {
            assert_eq!(p.upstream, 0);
            assert_eq!(p.rewrite.as_deref(), Some("/"));
        }
        other => panic!("unexpected {other:?}"),
    }
    match &site.routes[1].action {
        Action::Redirect(r) => {
            assert_eq!(r.status.as_u16(), 301);
            assert!(r.keep_path);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        site.routes[2].methods.as_ref().unwrap(),
        &[http::Method::GET, http::Method::HEAD]
    );
    assert_eq!(site.routes[2].name, "app.example.com/");
}

#[test]
fn unknown_key_is_rejected_with_position() {
    let text = "[server]\nhttp = [\":8080\"]\nlisten = 1\n";
    fails(text, 3, 1, "server.listen", "unknown field `listen`");
}

#[test]
fn unknown_key_in_route_names_the_route() {
    let text = "[[site]]\nhosts = [\"a.com\"]\n[[site.route]]\npath = \"/\"\nrespond = {}\nupstreem = \"x\"\n";
    let e = fails(text, 6, 1, "site[0].route[0].upstreem", "unknown field `upstreem`");
    assert!(e.to_string().contains("expected one of"), "{e}");
}

#[test]
fn wrong_type_is_rejected_with_position() {
    fails("[server]\nworkers = \"two\"\n", 2, 11, "server.workers", "invalid type");
}

#[test]
fn bad_duration_names_the_key() {
    let text = "[server]\nshutdown_timeout = \"10 parsecs\"\n";
    fails(
        text,
        2,
        20,
        "server.shutdown_timeout",
        "invalid duration \"10 parsecs\"",
    );
}

#[test]
fn bad_listen_address_names_the_key() {
    fails(
        "[server]\nhttp = [\":8080\", \"localhost:80\"]\n",
        2,
        18,
        "server.http[1]",
        "invalid listen address",
    );
}

#[test]
fn bad_cidr_names_the_key() {
    fails(
        "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
        2,
        20,
        "server.trusted_proxies[0]",
        "invalid network",
    );
}

#[test]
fn trusted_proxies_accept_ips_and_cidrs() {
    let c = ok("[server]\ntrusted_proxies = [\"10.0.0.1/8\", \"192.168.1.5\", \"fd00::/8\"]\n");
    let nets: Vec<String> = c.server.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.1.5/32", "fd00::/8"]);
}

#[test]
fn duplicate_host_points_at_second_use() {
    let text = "[[site]]\nhosts = [\"a.com\"]\n[[site]]\nhosts = [\"x.com\", \"A.com\"]\n";
    fails(text, 4, 19, "site[1].hosts[1]", "already used by site[0]");
}

#[test]
fn undefined_upstream_lists_the_defined_ones() {
    let text = "[upstream.api]\ntargets = [\"127.0.0.1:1\"]\n[[site]]\nhosts = [\"a.com\"]\n[[site.route]]\npath = \"/\"\nupstream = \"apii\"\n";
    fails(
        text,
        7,
        12,
        "site[0].route[0].upstream",
        "upstream \"apii\" is not defined; defined upstreams: \"api\"",
    );
}

#[test]
fn route_without_action_is_rejected() {
    let text = "[[site]]\nhosts = [\"a.com\"]\n[[site.route]]\npath = \"/\"\n";
    fails(text, 3, 1, "site[0].route[0]", "a route needs one action");
}

#[test]
fn route_with_two_actions_is_rejected() {
    let text =
        "[[site]]\nhosts = [\"a.com\"]\n[[site.route]]\npath = \"/\"\nrespond = {}\nredirect = { to = \"/x\" }\n";
    fails(text, 3, 1, "site[0].route[0]", "sets redirect and respond");
}

#[test]
fn bad_target_is_rejected() {
    let text = "[upstream.api]\ntargets = [\"http://127.0.0.1:8000\"]\n";
    fails(text, 2, 12, "upstream.api.targets[0]", "without a scheme");
    let text = "[upstream.api]\ntargets = [\"127.0.0.1\"]\n";
    fails(text, 2, 12, "upstream.api.targets[0]", "expected host:port");
}

#[test]
fn read_timeout_defaults_and_parses() {
    let c = ok("[upstream.api]\ntargets = [\"127.0.0.1:8000\"]\n");
    assert_eq!(c.upstreams[0].read_timeout, std::time::Duration::from_secs(300));
    let c = ok("[upstream.api]\ntargets = [\"127.0.0.1:8000\"]\nread_timeout = \"5m\"\n");
    assert_eq!(c.upstreams[0].read_timeout, std::time::Duration::from_secs(300));
    let text = "[upstream.api]\ntargets = [\"127.0.0.1:8000\"]\nread_timeout = \"0s\"\n";
    fails(text, 3, 16, "upstream.api.read_timeout", "greater than zero");
}

#[test]
fn unix_socket_targets() {
    let c = ok("[upstream.api]\ntargets = [\"unix:/run/app.sock\", { addr = \"127.0.0.1:8000\", weight = 2 }]\n");
    let t = &c.upstreams[0].targets;
    assert_eq!(t[0].unix.as_deref(), Some(Path::new("/run/app.sock")));
    assert_eq!(&*t[0].id, "unix:/run/app.sock");
    assert_eq!(
        t[0].authority.as_str(),
        "localhost",
        "the Host header a socket target gets"
    );
    assert_eq!(
        (t[1].unix.as_deref(), &*t[1].id, t[1].weight),
        (None, "127.0.0.1:8000", 2)
    );

    let text = "[upstream.api]\ntargets = [\"unix:run/app.sock\"]\n";
    fails(text, 2, 12, "upstream.api.targets[0]", "unix:/absolute/path");
    let long = format!("[upstream.api]\ntargets = [\"unix:/{}\"]\n", "a".repeat(107));
    fails(&long, 2, 12, "upstream.api.targets[0]", "at most 107 bytes");
    let text = "[upstream.api]\ntargets = [\"unix:/run/a.sock\", \"unix:/run/a.sock\"]\n";
    fails(
        text,
        2,
        32,
        "upstream.api.targets[1]",
        "target unix:/run/a.sock is listed twice",
    );
}

#[test]
fn bad_redirect_status_is_rejected() {
    let text =
        "[[site]]\nhosts = [\"a.com\"]\n[[site.route]]\npath = \"/\"\nredirect = { to = \"/x\", status = 200 }\n";
    fails(text, 5, 34, "site[0].route[0].redirect.status", "not a redirect status");
}

#[test]
fn bad_method_is_rejected() {
    let text = "[[site]]\nhosts = [\"a.com\"]\n[[site.route]]\npath = \"/\"\nmethods = [\"G T\"]\nrespond = {}\n";
    fails(text, 5, 12, "site[0].route[0].methods[0]", "invalid method");
}

#[test]
fn bad_path_is_rejected() {
    let text = "[[site]]\nhosts = [\"a.com\"]\n[[site.route]]\npath = \"api\"\nrespond = {}\n";
    fails(text, 4, 8, "site[0].route[0].path", "invalid path prefix");
}

#[test]
fn bad_host_patterns_are_rejected() {
    fails(
        "[[site]]\nhosts = [\"*\"]\n",
        2,
        10,
        "site[0].hosts[0]",
        "default = true",
    );
    fails(
        "[[site]]\nhosts = [\"a.*.com\"]\n",
        2,
        10,
        "site[0].hosts[0]",
        "only allowed as the whole first label",
    );
    fails(
        "[[site]]\nhosts = [\"a.com:80\"]\n",
        2,
        10,
        "site[0].hosts[0]",
        "without a port",
    );
}

#[test]
fn two_default_sites_are_rejected() {
    let text = "[[site]]\ndefault = true\n[[site]]\ndefault = true\n";
    let e = parse_env(text, &[]).unwrap_err();
    assert_eq!(e.key(), "site[1].default");
    assert!(e.to_string().contains("already the default site"), "{e}");
}

#[test]
fn syntax_error_has_position() {
    let e = parse_env("[server\nhttp = 1\n", &[]).unwrap_err();
    assert_eq!(e.position().map(|p| p.0), Some(1));
    assert!(matches!(e.kind(), ErrorKind::Syntax(_)), "{e}");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    let e = parse_env("[server]\nworkers = 1\nworkers = 2\n", &[]).unwrap_err();
    assert_eq!(e.position().map(|p| p.0), Some(3), "{e}");
}

#[test]
fn variables_are_substituted() {
    let text = "[upstream.api]\ntargets = [\"${API_HOST}:${API_PORT:-9000}\"]\n";
    let c = parse_env(text, &[("API_HOST", "10.1.2.3")]).unwrap();
    assert_eq!(c.upstreams[0].targets[0].authority.as_str(), "10.1.2.3:9000");
}

#[test]
fn literal_dollar_brace_is_kept() {
    let text = "[[site]]\nhosts = [\"a.com\"]\n[[site.route]]\npath = \"/\"\nrespond = { body = \"$${HOME}\" }\n";
    let c = parse_env(text, &[]).unwrap();
    match &c.sites[0].routes[0].action {
        Action::Respond(r) => assert_eq!(r.body, "${HOME}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn missing_variable_is_named() {
    let text = "# ${IN_COMMENT} is ignored\n[server]\ndata_dir = \"/srv/${DATA}\"\n";
    let e = parse_env(text, &[]).unwrap_err();
    assert_eq!(e.position(), Some((3, 18)));
    assert!(e.to_string().contains("environment variable DATA is not set"), "{e}");
}

#[test]
fn positions_after_substitution_map_to_the_original_text() {
    // The value expands to something longer; the error after it must still point
    // at the original column of the bad value.
    let text = "[server]\nhttp = [\"${ADDR}\", \"bad\"]\n";
    let e = parse_env(text, &[("ADDR", "127.0.0.1:8080000000000000")]).unwrap_err();
    assert_eq!(e.position(), Some((2, 9)), "{e}");
    let e = parse_env(text, &[("ADDR", "127.0.0.1:80")]).unwrap_err();
    assert_eq!(e.position(), Some((2, 20)), "{e}");
}

#[test]
fn io_error_names_the_file() {
    let e = load(Path::new("/nonexistent/gatehouse.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/gatehouse.toml: cannot read config file"),
        "{e}"
    );
}

#[test]
fn zero_workers_rejected() {
    fails("[server]\nworkers = 0\n", 2, 11, "server.workers", "between 1 and 1024");
}

#[test]
fn rewrite_and_strip_prefix_conflict() {
    let text = "[upstream.a]\ntargets=[\"127.0.0.1:1\"]\n[[site]]\nhosts=[\"a.com\"]\n[[site.route]]\npath=\"/\"\nupstream=\"a\"\nstrip_prefix=true\nrewrite=\"/x\"\n";
    fails(text, 9, 9, "site[0].route[0].rewrite", "not both");
}

#[test]
fn static_routes_and_release_slots() {
    let text = r#"
[release.frontend]
keep = 3
max_size = "64MiB"
[[site]]
hosts = ["a.test"]
  [[site.route]]
  path = "/"
  static = { release = "frontend", spa = true, immutable = ["assets/**"] }
  [[site.route]]
  path = "/docs/"
  static = { dir = "./site", listing = true, dotfiles = "hide" }
  [[site.route]]
  path = "/qa/"
  static = { release = "frontend_qa" }
"#;
    let c = ok(text);
    match &c.sites[0].routes[0].action {
        Action::Static(st) => {
            assert_eq!(st.source, StaticSource::Release("frontend".into()));
            assert!(st.spa);
            assert_eq!(st.immutable, Immutable::Globs(vec!["assets/**".into()]));
        }
        other => panic!("unexpected {other:?}"),
    }
    match &c.sites[0].routes[1].action {
        Action::Static(st) => {
            assert_eq!(st.source, StaticSource::Dir("/etc/gatehouse/site".into()));
            assert_eq!(st.dotfiles, Dotfiles::Hide);
        }
        other => panic!("unexpected {other:?}"),
    }
    let front = c.releases.iter().find(|r| r.name == "frontend").unwrap();
    assert_eq!((front.keep, front.max_size, front.spa), (3, Some(64 << 20), true));
    let qa = c.releases.iter().find(|r| r.name == "frontend_qa").unwrap();
    assert_eq!((qa.keep, qa.spa), (5, false));
}

#[test]
fn static_errors_are_precise() {
    let base = "[[site]]\nhosts = [\"a.test\"]\n[[site.route]]\npath = \"/\"\n";
    fails(
        &format!("{base}static = {{ dir = \"d\", release = \"r\" }}\n"),
        5,
        10,
        "site[0].route[0].static",
        "exactly one of `dir` or `release`",
    );
    fails(
        &format!("{base}static = {{ dir = \"d\", dotfiles = \"show\" }}\n"),
        5,
        34,
        "site[0].route[0].static.dotfiles",
        "unknown policy",
    );
    fails(
        &format!("{base}static = {{ release = \"a/b\" }}\n"),
        5,
        22,
        "site[0].route[0].static.release",
        "release slot name",
    );
    fails(
        &format!("{base}static = {{ dir = \"d\", compress_min_size = \"big\" }}\n"),
        5,
        43,
        "site[0].route[0].static.compress_min_size",
        "invalid size",
    );
    fails(
        &format!("{base}static = {{ dir = \"d\" }}\nstrip_prefix = true\n"),
        3,
        1,
        "site[0].route[0].strip_prefix",
        "only applies to `upstream`",
    );
}

#[test]
fn store_and_backup_sections() {
    let c = ok("[store]\nurl = \"postgres://u@db/app\"\nmax_connections = 20\n[backup]\nevery = \"24h\"\nkeep = 3\n");
    assert_eq!(c.store.url, "postgres://u@db/app");
    assert_eq!(c.store.max_connections, 20);
    assert_eq!(c.backup.every, Some(std::time::Duration::from_secs(86400)));
    assert_eq!(c.backup.dir, Path::new("/etc/gatehouse/data/backups"));
    fails(
        "[store]\nurl = \"mysql://x\"\n",
        2,
        7,
        "store.url",
        "expected sqlite://FILE or postgres://",
    );
    fails(
        "[backup]\nevery = \"daily\"\n",
        2,
        9,
        "backup.every",
        "invalid duration",
    );
}

#[test]
fn upstream_balancing_keys() {
    let c = ok(r#"
[upstream.api]
targets = ["10.0.0.1:80", { addr = "10.0.0.2:80", weight = 3 }]
balance = "header_hash"
hash_header = "X-User"
health = { path = "/healthz", interval = "1s", status = "204", rise = 1 }
passive = { failures = 2, cooldown = "1s" }
retries = { attempts = 3, on_status = [502, 503], budget = 0.1 }
"#);
    let u = &c.upstreams[0];
    assert_eq!(u.targets[1].weight, 3);
    assert_eq!(u.balance, Balance::HeaderHash(http::HeaderName::from_static("x-user")));
    let h = u.health.as_ref().unwrap();
    assert_eq!((h.status, h.rise, h.fall, h.wait_healthy), ((204, 204), 1, 3, true));
    assert_eq!(u.passive.failures, 2);
    assert_eq!(u.retries.on_status, vec![502, 503]);
}

#[test]
fn upstream_balancing_errors() {
    let t = "[upstream.api]\ntargets = [\"10.0.0.1:80\"]\n";
    fails(
        &format!("{t}balance = \"fastest\"\n"),
        3,
        11,
        "upstream.api.balance",
        "unknown policy \"fastest\"",
    );
    fails(
        &format!("{t}balance = \"header_hash\"\n"),
        3,
        11,
        "upstream.api.hash_header",
        "needs `hash_header`",
    );
    fails(
        &format!("{t}retries = {{ on_status = [404] }}\n"),
        3,
        26,
        "upstream.api.retries.on_status[0]",
        "only 5xx",
    );
    fails(
        &format!("{t}retries = {{ budget = 1.5 }}\n"),
        3,
        22,
        "upstream.api.retries.budget",
        "fraction",
    );
    fails(
        &format!("{t}health = {{ path = \"healthz\" }}\n"),
        3,
        19,
        "upstream.api.health.path",
        "starts with `/`",
    );
    fails(
        &format!("{t}health = {{ path = \"/h\", status = \"2xx\" }}\n"),
        3,
        34,
        "upstream.api.health.status",
        "status or range",
    );
    fails(
        &format!("{t}balance = \"cookie\"\ncookie = {{ secret = \"short\" }}\n"),
        4,
        21,
        "upstream.api.cookie.secret",
        "at least 16",
    );
    fails(
        "[upstream.api]\ntargets = [{ addr = \"10.0.0.1:80\", weight = 0 }]\n",
        2,
        12,
        "upstream.api.targets[0].weight",
        "1 to 1000",
    );
}
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn admin_is_off_by_default() {
    assert!(ok("").server.admin.is_none());
}

#[test]
fn admin_on_loopback_needs_no_token() {
    let c = ok("[server]\nadmin = \"127.0.0.1:2019\"\n");
    let admin = c.server.admin.unwrap();
    assert_eq!(admin.listen, "127.0.0.1:2019".parse().unwrap());
    assert!(admin.token.is_none());
    let c = ok("[server]\nadmin = \"[::1]:2019\"\n");
    assert!(c.server.admin.unwrap().listen.ip().is_loopback());
}

#[test]
fn admin_token_comes_from_the_environment_and_is_redacted() {
    let text = "[server]\nadmin = \"0.0.0.0:2019\"\nadmin_token = \"${GATEHOUSE_ADMIN_TOKEN}\"\n";
    let c = parse_env(text, &[("GATEHOUSE_ADMIN_TOKEN", TOKEN)]).unwrap();
    let admin = c.server.admin.as_ref().unwrap();
    assert_eq!(admin.token.as_ref().unwrap().expose(), TOKEN);
    let shown = format!("{c:?}");
    assert!(!shown.contains(TOKEN), "the token leaked into Debug output");
    assert!(shown.contains("token: Some(***)"), "{shown}");
}

#[test]
fn public_admin_address_requires_a_token() {
    fails(
        "[server]\nadmin = \"0.0.0.0:2019\"\n",
        2,
        9,
        "server.admin",
        "not a loopback address, so the admin API needs `admin_token`",
    );
    fails(
        "[server]\nadmin = \":2019\"\n",
        2,
        9,
        "server.admin",
        "needs `admin_token`",
    );
    // An IPv4-mapped loopback address is loopback.
    assert!(
        ok("[server]\nadmin = \"[::ffff:127.0.0.1]:2019\"\n")
            .server
            .admin
            .is_some()
    );
}

#[test]
fn short_admin_token_is_rejected_without_echoing_it() {
    let e = fails(
        "[server]\nadmin = \"127.0.0.1:2019\"\nadmin_token = \"hunter2hunter2\"\n",
        3,
        15,
        "server.admin_token",
        "the token has 14 characters; use at least 32",
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
    // Through a variable the position is the reference's.
    let text = "[server]\nadmin = \"127.0.0.1:2019\"\nadmin_token = \"${T:-}\"\n";
    let e = parse_env(text, &[]).unwrap_err();
    assert_eq!((e.position(), e.key()), (Some((3, 15)), "server.admin_token"), "{e}");
    assert!(e.to_string().contains("has 0 characters"), "{e}");
}

#[test]
fn admin_token_with_spaces_is_rejected() {
    fails(
        &format!("[server]\nadmin = \"127.0.0.1:2019\"\nadmin_token = \"{TOKEN} x\"\n"),
        3,
        15,
        "server.admin_token",
        "printable ASCII characters without spaces",
    );
}

#[test]
fn admin_token_without_admin_is_rejected() {
    fails(
        &format!("[server]\nadmin_token = \"{TOKEN}\"\n"),
        2,
        15,
        "server.admin_token",
        "no admin listener to protect",
    );
}

#[test]
fn admin_address_errors_are_precise() {
    fails(
        "[server]\nadmin = \"localhost:2019\"\n",
        2,
        9,
        "server.admin",
        "invalid listen address",
    );
    fails(
        "[server]\nhttp = [\"127.0.0.1:8080\"]\nadmin = \"127.0.0.1:8080\"\n",
        3,
        9,
        "server.admin",
        "already used by server.http[0]",
    );
    fails("[server]\nadmin = 2019\n", 2, 9, "server.admin", "invalid type");
}

const POLICY_BASE: &str = r#"
[upstream.api]
targets = ["127.0.0.1:8000"]
max_in_flight = 100

[rate_limit.api]
rate = "20/s burst 40"

[cors.web]
origins = ["https://app.example.com", "https://*.example.org"]
credentials = true

[limits]
max_body_size = "10MiB"
header_timeout = "10s"

[[site]]
hosts = ["app.example.com"]
deny = ["203.0.113.0/24"]
max_body_size = "1MiB"
  [[site.route]]
  path = "/api/"
  upstream = "api"
  rate_limit = "api"
  cors = "web"
  max_in_flight = 10
  [[site.route]]
  path = "/login"
  upstream = "api"
  rate_limit = "5/m burst 10 per header X-Api-Key"
  max_body_size = "4KiB"
  [[site.route]]
  path = "/"
  respond = { body = "hi" }
  security_headers = { csp = "default-src 'self'", frame = "sameorigin" }
"#;

#[test]
fn policy_keys_convert_to_the_typed_model() {
    let c = ok(POLICY_BASE);
    assert_eq!(c.rate_limits.len(), 2, "one named, one inline");
    assert_eq!(c.rate_limits[0].name, "api");
    assert!(!c.rate_limits[0].shared, "no [redis]: local");
    assert_eq!(c.rate_limits[1].name, "app.example.com/login");
    assert_eq!(c.rate_limits[1].spec.to_string(), "5/m burst 10 per header x-api-key");
    assert_eq!(c.upstreams[0].max_in_flight, Some(100));
    assert_eq!(c.limits.header_timeout, std::time::Duration::from_secs(10));
    assert_eq!(c.limits.max_body_size, Some(10 << 20));
    assert_eq!(c.limits.keepalive_requests, 1000);
    let site = &c.sites[0];
    assert!(!site.policy.ip_rules.check("203.0.113.5".parse().unwrap()).is_allowed());
    let api = &site.routes[0].policy;
    assert_eq!(api.rate_limit, Some(0));
    assert_eq!(api.cors.as_ref().map(|p| p.name()), Some("web"));
    assert_eq!(api.max_in_flight, Some(10));
    assert_eq!(api.max_body_size, Some(1 << 20), "inherited from the site");
    assert_eq!(site.routes[1].policy.rate_limit, Some(1));
    assert_eq!(site.routes[1].policy.max_body_size, Some(4096));
}

#[test]
fn shared_limits_follow_redis() {
    let c = ok(&format!("[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n{POLICY_BASE}"));
    assert!(c.rate_limits.iter().all(|l| l.shared));
    assert!(!format!("{:?}", c.redis).contains("6379/0"), "the url is a secret");
    fails(
        "[rate_limit.a]\nrate = \"1/s\"\nshared = true\n",
        3,
        10,
        "rate_limit.a.shared",
        "needs a [redis] table",
    );
}

#[test]
fn policy_errors_name_the_key_and_what_is_valid() {
    fails(
        "[rate_limit.a]\nrate = \"20/w\"\n",
        2,
        8,
        "rate_limit.a.rate",
        "unknown unit",
    );
    let routed = |extra: &str| {
        format!(
            "[upstream.u]\ntargets = [\"127.0.0.1:1\"]\n[[site]]\nhosts = [\"a.test\"]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"u\"\n  {extra}\n"
        )
    };
    fails(
        &routed("rate_limit = \"apii\""),
        8,
        16,
        "site[0].route[0].rate_limit",
        "is not defined",
    );
    fails(
        &routed("cors = \"web\""),
        8,
        10,
        "site[0].route[0].cors",
        "is not defined",
    );
    fails(
        &routed("allow = [\"10.0.0.0/33\"]"),
        8,
        12,
        "site[0].route[0].allow[0]",
        "invalid network",
    );
    fails(
        &routed("max_in_flight = 0"),
        8,
        19,
        "site[0].route[0].max_in_flight",
        "expected 1 to",
    );
    fails(
        &routed("headers = { request = { set = { x-forwarded-for = \"1.2.3.4\" } } }"),
        8,
        13,
        "site[0].route[0].headers.request",
        "x-forwarded-for",
    );
    fails(
        "[cors.any]\norigins = [\"*\"]\ncredentials = true\n",
        1,
        1,
        "cors.any",
        "credentials",
    );
    fails(
        "[limits]\nmax_header_size = \"1KiB\"\n",
        2,
        19,
        "limits.max_header_size",
        "8KiB to 16MiB",
    );
    fails(
        "[limits]\nbody_min_rate = \"0\"\n",
        2,
        17,
        "limits.body_min_rate",
        "\"off\"",
    );
    fails("[redis]\nurl = \"http://x\"\n", 2, 7, "redis.url", "redis://");
}

const TLS_BASE: &str = r#"[server]
http = ["127.0.0.1:80"]
https = ["127.0.0.1:443"]
acme_email = "ops@example.com"
"#;

fn tls_site(text: &str) -> Site {
    ok(&format!("{TLS_BASE}{text}")).sites.remove(0)
}

#[test]
fn tls_modes_default_by_host_name() {
    let public = tls_site("[[site]]\nhosts = [\"app.example.com\"]\nroute = [{ path = \"/\", respond = {} }]\n");
    assert_eq!(public.tls, SiteTls::Acme);
    assert_eq!(public.hsts, Some(std::time::Duration::from_secs(365 * 24 * 3600)));
    assert!(public.redirect_https);
    for local in ["localhost", "app.localhost", "shop.test", "127.0.0.1", "[::1]"] {
        let site = tls_site(&format!("[[site]]\nhosts = [\"{local}\"]\n"));
        assert_eq!(site.tls, SiteTls::Internal, "{local}");
        assert_eq!(site.hsts, None, "no HSTS for {local}");
        assert!(site.redirect_https);
    }
    // A public wildcard cannot come from ACME here, so it stays plain HTTP by default.
    let wildcard = tls_site("[[site]]\nhosts = [\"*.example.com\"]\n");
    assert_eq!(wildcard.tls, SiteTls::Off);
    assert!(!wildcard.redirect_https);
    // Without acme_email, public names have no certificate source.
    let c = ok("[server]\nhttps = [\"127.0.0.1:443\"]\n[[site]]\nhosts = [\"app.example.com\"]\n");
    assert_eq!(c.sites[0].tls, SiteTls::Off);
    assert!(c.tls.acme.is_none());
    // Without an HTTPS listener, nothing is TLS.
    let c = ok("[[site]]\nhosts = [\"localhost\"]\n");
    assert_eq!(c.sites[0].tls, SiteTls::Off);
}

#[test]
fn tls_files_mode_and_explicit_settings() {
    let site = tls_site(
        "[[site]]\nhosts = [\"*.example.com\"]\ntls = { cert = \"certs/c.pem\", key = \"/k.pem\" }\nhsts = \"30d\"\nredirect_https = false\n",
    );
    assert_eq!(
        site.tls,
        SiteTls::Files {
            cert: Path::new("/etc/gatehouse/certs/c.pem").to_path_buf(),
            key: Path::new("/k.pem").to_path_buf()
        }
    );
    assert_eq!(site.hsts, Some(std::time::Duration::from_secs(30 * 86400)));
    assert!(!site.redirect_https);
    let site = tls_site("[[site]]\nhosts = [\"app.example.com\"]\ntls = \"internal\"\n");
    assert_eq!(site.tls, SiteTls::Internal);
    let site = tls_site("[[site]]\nhosts = [\"app.example.com\"]\nhsts = false\n");
    assert_eq!(site.hsts, None);
}

#[test]
fn acme_and_on_demand_tables() {
    let c = ok(&format!(
        "{TLS_BASE}[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\nca_root = \"pebble.pem\"\neab_kid = \"kid\"\neab_hmac = \"c2VjcmV0\"\nmax_concurrent_orders = 2\nchallenge = \"tls-alpn-01\"\n\
         [tls]\nsni_mismatch = \"allow\"\n[tls.on_demand]\nallow = [\"*.customers.example.com\"]\nask = \"http://127.0.0.1:9000/ok\"\nper_name_interval = \"5m\"\nlimit = \"10/h\"\n"
    ));
    let acme = c.tls.acme.unwrap();
    assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(acme.directory, "https://127.0.0.1:14000/dir");
    assert_eq!(acme.ca_root.unwrap(), Path::new("/etc/gatehouse/pebble.pem"));
    assert_eq!(acme.eab.unwrap().kid, "kid");
    assert_eq!(acme.max_concurrent_orders.get(), 2);
    assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
    assert_eq!(c.tls.sni_mismatch, SniMismatch::Allow);
    let od = c.tls.on_demand.unwrap();
    assert_eq!(od.allow, vec!["*.customers.example.com".to_owned()]);
    assert_eq!(od.limit, 10);
    assert_eq!(od.limit_window, std::time::Duration::from_secs(3600));
    assert_eq!(od.per_name_interval, std::time::Duration::from_secs(300));
    assert_eq!(c.server.https, vec!["127.0.0.1:443".parse().unwrap()]);
}

#[test]
fn tls_errors_point_at_the_key() {
    fails(
        "[[site]]\nhosts = [\"localhost\"]\ntls = \"internal\"\n",
        3,
        7,
        "site[0].tls",
        "no HTTPS listener",
    );
    fails(
        &format!("{TLS_BASE}[[site]]\nhosts = [\"a.example.com\", \"*.example.com\"]\ntls = \"acme\"\n"),
        6,
        27,
        "site[0].hosts[1]",
        "DNS-01",
    );
    fails(
        "[server]\nhttps = [\"127.0.0.1:443\"]\n[[site]]\nhosts = [\"a.example.com\"]\ntls = \"acme\"\n",
        5,
        7,
        "site[0].tls",
        "acme_email",
    );
    fails(
        &format!("{TLS_BASE}[[site]]\nhosts = [\"localhost\"]\ntls = \"acme\"\n"),
        6,
        10,
        "site[0].hosts[0]",
        "internal",
    );
    fails(
        &format!("{TLS_BASE}[[site]]\nhosts = [\"localhost\"]\nhsts = \"1y\"\n"),
        7,
        8,
        "site[0].hsts",
        "development name",
    );
    fails(
        &format!("{TLS_BASE}[[site]]\nhosts = [\"a.example.com\"]\ntls = \"tls\"\n"),
        7,
        7,
        "site[0].tls",
        "unknown mode",
    );
    fails(
        &format!("{TLS_BASE}[acme]\neab_kid = \"k\"\n"),
        6,
        11,
        "acme.eab_kid",
        "eab_hmac",
    );
    fails(
        &format!("{TLS_BASE}[tls.on_demand]\nper_name_interval = \"1m\"\n"),
        5,
        1,
        "tls.on_demand",
        "`allow`",
    );
    fails(
        "[server]\nhttp = [\"127.0.0.1:80\"]\nhttps = [\"127.0.0.1:80\"]\n",
        3,
        10,
        "server.https[0]",
        "plain-HTTP listener",
    );
    fails(
        &format!("{TLS_BASE}[[site]]\nhosts = [\"a.example.com\"]\ntls = \"off\"\nredirect_https = true\n"),
        8,
        18,
        "site[0].redirect_https",
        "no TLS",
    );
    fails(
        "[server]\nhttp = []\nhttps = [\"127.0.0.1:443\"]\nacme_email = \"a@b.example\"\n[[site]]\nhosts = [\"a.example.com\"]\n",
        5,
        1,
        "site[0].tls",
        "HTTP-01",
    );
}

#[test]
fn default_sni_names_a_host_of_a_tls_site() {
    let c = ok(&format!(
        "{TLS_BASE}[tls]\ndefault_sni = \"App.Example.com.\"\n[[site]]\nhosts = [\"app.example.com\"]\n"
    ));
    assert_eq!(c.tls.default_sni.as_deref(), Some("app.example.com"));
    let c = ok(&format!(
        "{TLS_BASE}[tls]\ndefault_sni = \"a.wild.example.com\"\n[[site]]\nhosts = [\"*.wild.example.com\"]\ntls = {{ cert = \"c.pem\", key = \"k.pem\" }}\n"
    ));
    assert_eq!(c.tls.default_sni.as_deref(), Some("a.wild.example.com"));
    assert_eq!(ok(TLS_BASE).tls.default_sni, None);

    fails(
        &format!("{TLS_BASE}[tls]\ndefault_sni = \"other.example.com\"\n[[site]]\nhosts = [\"app.example.com\"]\n"),
        6,
        15,
        "tls.default_sni",
        "no site with TLS has the host \"other.example.com\"",
    );
    fails(
        &format!("{TLS_BASE}[tls]\ndefault_sni = \"*.example.com\"\n"),
        6,
        15,
        "tls.default_sni",
        "not a wildcard",
    );
    fails(
        &format!("{TLS_BASE}[tls]\ndefault_sni = \"app.example.com:443\"\n"),
        6,
        15,
        "tls.default_sni",
        "without a port",
    );
    // A site with TLS off does not count.
    fails(
        &format!(
            "{TLS_BASE}[tls]\ndefault_sni = \"plain.example.com\"\n[[site]]\nhosts = [\"plain.example.com\"]\ntls = \"off\"\n"
        ),
        6,
        15,
        "tls.default_sni",
        "no site with TLS",
    );
}
