//! `gatehouse check`: validate and summarise a config.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use gatehouse_config::{Action, Config, HostPattern, SiteTls, StaticSource};

pub(crate) fn run(path: &Path) -> anyhow::Result<()> {
    let config = gatehouse_config::load(path)?;
    // Write errors (a closed pipe, as in `gatehouse check | head`) end the
    // output quietly instead of panicking in `println!`.
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", summary(&config)).and_then(|()| writeln!(out, "{}: ok", path.display()));
    Ok(())
}

/// A human-readable overview of what the config will serve.
pub(crate) fn summary(c: &Config) -> String {
    let mut out = String::new();
    let listen: Vec<String> = c.server.http.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "listen http: {}", listen.join(", "));
    if !c.server.https.is_empty() {
        let https: Vec<String> = c.server.https.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "listen https: {}", https.join(", "));
    }
    if let Some(acme) = &c.tls.acme {
        let _ = writeln!(
            out,
            "acme: {} ({}){}",
            acme.directory,
            match acme.challenge {
                gatehouse_config::AcmeChallenge::Http01 => "http-01",
                gatehouse_config::AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            },
            if c.tls.on_demand.is_some() {
                ", on-demand on"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        out,
        "workers: {}, data_dir: {}",
        c.server.workers,
        c.server.data_dir.display()
    );
    for site in &c.sites {
        let mut hosts: Vec<String> = site
            .hosts
            .iter()
            .map(|h| match h {
                HostPattern::Exact(s) => s.clone(),
                HostPattern::Wildcard(s) => format!("*{s}"),
            })
            .collect();
        if site.default {
            hosts.push("(default)".into());
        }
        let _ = writeln!(out, "site {}", hosts.join(" "));
        let _ = writeln!(out, "  tls {}", tls_summary(site));
        for r in &site.routes {
            let methods = r
                .methods
                .as_ref()
                .map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "*".into());
            let action = match &r.action {
                Action::Proxy(p) => {
                    let up = &c.upstreams[p.upstream];
                    let mut s = format!("proxy → upstream {}", up.name);
                    if let Some(rw) = &p.rewrite {
                        let _ = write!(s, " (prefix → {rw})");
                    }
                    if p.preserve_host {
                        s.push_str(" (host preserved)");
                    }
                    s
                }
                Action::Redirect(rd) => format!(
                    "redirect {} → {}{}",
                    rd.status.as_u16(),
                    rd.to,
                    if rd.keep_path { " (+path)" } else { "" }
                ),
                Action::Respond(rs) => format!("respond {}", rs.status.as_u16()),
                Action::Static(st) => {
                    let source = match &st.source {
                        StaticSource::Dir(d) => format!("dir {}", d.display()),
                        StaticSource::Release(slot) => format!("release slot {slot}"),
                    };
                    format!("static {source}{}", if st.spa { " (spa)" } else { "" })
                }
                _ => "other".into(),
            };
            let _ = writeln!(out, "  route {:<24} {:<12} {action}", r.path, methods);
        }
    }
    for up in &c.upstreams {
        let targets: Vec<String> = up
            .targets
            .iter()
            .map(|t| {
                if t.weight == 1 {
                    t.id.to_string()
                } else {
                    format!("{} (weight {})", t.id, t.weight)
                }
            })
            .collect();
        let health = match &up.health {
            Some(h) => format!("health GET {} every {:?}", h.path, h.interval),
            None => "no active health checks".to_owned(),
        };
        let _ = writeln!(
            out,
            "upstream {}: {} ({}; {health}; {} attempts; connect {:?}, response {:?}, read {:?})",
            up.name,
            targets.join(", "),
            up.balance.as_str(),
            up.retries.attempts,
            up.connect_timeout,
            up.response_timeout,
            up.read_timeout
        );
    }
    for r in &c.releases {
        let _ = writeln!(
            out,
            "release slot {}: keep {}{}",
            r.name,
            r.keep,
            if r.spa { ", index.html required" } else { "" }
        );
    }
    // The store crate owns URL redaction; no password reaches the terminal.
    let _ = writeln!(out, "store: {}", crate::storage::store_options(c).redacted_url());
    match c.backup.every {
        Some(every) => {
            let _ = writeln!(
                out,
                "backups: every {every:?}, keep {}, in {}",
                c.backup.keep,
                c.backup.dir.display()
            );
        }
        None => {
            let _ = writeln!(out, "backups: on demand (`gatehouse backup`), keep {}", c.backup.keep);
        }
    }
    out
}

/// `acme, hsts 365d, redirect` and the like.
fn tls_summary(site: &gatehouse_config::Site) -> String {
    let mut s = match &site.tls {
        SiteTls::Files { cert, key } => format!("files (cert {}, key {})", cert.display(), key.display()),
        other => other.as_str().to_owned(),
    };
    if let Some(age) = site.hsts {
        let _ = write!(s, ", hsts {}d", age.as_secs() / 86400);
    }
    if site.redirect_https {
        s.push_str(", http → https");
    }
    s
}
