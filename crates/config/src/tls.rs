//! Second layer for the HTTPS keys: `server.https`, `server.acme_email`, `[acme]`,
//! `[tls]`, `[tls.on_demand]`, and the `tls`, `hsts` and `redirect_https` keys of
//! sites.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use crate::error::RawError;
use crate::file::{self, Spanned};
use crate::model::{Acme, AcmeChallenge, Eab, HostPattern, OnDemand, SiteTls, SniMismatch, Tls};
use crate::units;

/// Defaults of the HTTPS keys, each with its reason.
pub(crate) mod defaults {
    use std::time::Duration;

    /// Let's Encrypt production: free, trusted everywhere, no account setup.
    pub(crate) const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
    /// A handful of orders at once finishes a cold start of dozens of sites in
    /// minutes while staying far below Let's Encrypt's new-order rate limits.
    pub(crate) const MAX_CONCURRENT_ORDERS: usize = 4;
    /// One year: the minimum the HSTS preload list accepts, and long enough that
    /// a returning visitor is never downgraded.
    pub(crate) const HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);
    /// A refused or failed name is not retried for a while, so repeated
    /// handshakes for it cannot make the server hammer the CA.
    pub(crate) const ON_DEMAND_PER_NAME: Duration = Duration::from_secs(15 * 60);
    /// 20 new certificates an hour overall: enough for sign-ups of a SaaS with
    /// customer domains, far below the CA's per-account limits.
    pub(crate) const ON_DEMAND_LIMIT: u32 = 20;
    pub(crate) const ON_DEMAND_WINDOW: Duration = Duration::from_secs(3600);
}

use crate::policy::{duration, invalid};

/// `server.https`: listen addresses, none of them shared with `server.http`.
pub(crate) fn convert_https(
    list: Option<&Vec<Spanned<String>>>,
    http: &[SocketAddr],
) -> Result<Vec<SocketAddr>, RawError> {
    let mut out = Vec::new();
    for (i, a) in list.into_iter().flatten().enumerate() {
        let key = format!("server.https[{i}]");
        let addr = crate::convert::parse_listen(a.get_ref()).map_err(|m| invalid(Some(a.span()), &key, m))?;
        if out.contains(&addr) {
            return Err(invalid(Some(a.span()), key, format!("{addr} is listed twice")));
        }
        if let Some(j) = http.iter().position(|h| *h == addr && addr.port() != 0) {
            return Err(invalid(
                Some(a.span()),
                key,
                format!("{addr} is already a plain-HTTP listener (server.http[{j}]); HTTPS needs its own port"),
            ));
        }
        out.push(addr);
    }
    Ok(out)
}

/// `server.acme_email`, `[acme]` and `[tls]`.
pub(crate) fn convert_tls(
    acme_email: Option<&Spanned<String>>,
    acme: Option<Spanned<file::AcmeFile>>,
    tls: Option<Spanned<file::TlsFile>>,
    base_dir: &Path,
) -> Result<Tls, RawError> {
    if let Some(e) = acme_email {
        let v = e.get_ref();
        let valid = v
            .split_once('@')
            .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.') && !v.contains(char::is_whitespace));
        if !valid {
            return Err(invalid(
                Some(e.span()),
                "server.acme_email",
                "expected an email address such as \"ops@example.com\"",
            ));
        }
    }
    let acme = match (acme_email, acme) {
        (None, None) => None,
        (email, table) => {
            let a = table.map(Spanned::into_inner).unwrap_or_default();
            let directory = match &a.directory {
                None => defaults::ACME_DIRECTORY.to_owned(),
                Some(d) => {
                    let ok = d.get_ref().starts_with("https://") && d.get_ref().parse::<http::Uri>().is_ok();
                    if !ok {
                        return Err(invalid(
                            Some(d.span()),
                            "acme.directory",
                            "expected the CA's directory URL, such as \"https://acme.example.net/directory\"",
                        ));
                    }
                    d.get_ref().clone()
                }
            };
            let eab = match (&a.eab_kid, &a.eab_hmac) {
                (None, None) => None,
                (Some(kid), Some(hmac)) => {
                    let h = hmac.get_ref().expose();
                    let base64url = !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=');
                    if !base64url {
                        // Never echo the value: it is a secret.
                        return Err(invalid(
                            Some(hmac.span()),
                            "acme.eab_hmac",
                            "expected the base64url key the CA handed out",
                        ));
                    }
                    if kid.get_ref().is_empty() {
                        return Err(invalid(Some(kid.span()), "acme.eab_kid", "must not be empty"));
                    }
                    Some(Eab {
                        kid: kid.get_ref().clone(),
                        hmac: hmac.get_ref().clone(),
                    })
                }
                (Some(kid), None) => {
                    return Err(invalid(Some(kid.span()), "acme.eab_kid", "set `eab_hmac` too"));
                }
                (None, Some(hmac)) => {
                    return Err(invalid(Some(hmac.span()), "acme.eab_hmac", "set `eab_kid` too"));
                }
            };
            let max_concurrent_orders = match &a.max_concurrent_orders {
                None => NonZeroUsize::new(defaults::MAX_CONCURRENT_ORDERS).unwrap_or(NonZeroUsize::MIN),
                Some(m) => usize::try_from(*m.get_ref())
                    .ok()
                    .filter(|n| *n <= 64)
                    .and_then(NonZeroUsize::new)
                    .ok_or_else(|| invalid(Some(m.span()), "acme.max_concurrent_orders", "expected 1 to 64"))?,
            };
            let challenge = match a.challenge.as_ref().map(|c| c.get_ref().as_str()) {
                None | Some("http-01") => AcmeChallenge::Http01,
                Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
                Some(other) => {
                    return Err(invalid(
                        a.challenge.as_ref().map(Spanned::span),
                        "acme.challenge",
                        format!("unknown challenge {other:?}; expected \"http-01\" or \"tls-alpn-01\""),
                    ));
                }
            };
            if let Some(r) = &a.ca_root {
                if r.get_ref().is_empty() {
                    return Err(invalid(Some(r.span()), "acme.ca_root", "expected a PEM file path"));
                }
            }
            Some(Acme {
                email: email.map(|e| e.get_ref().clone()),
                directory,
                ca_root: a
                    .ca_root
                    .as_ref()
                    .map(|r| crate::convert::resolve_path(base_dir, r.get_ref())),
                eab,
                max_concurrent_orders,
                challenge,
            })
        }
    };
    let Some(tls) = tls else {
        return Ok(Tls {
            acme,
            on_demand: None,
            sni_mismatch: SniMismatch::Refuse,
            default_sni: None,
        });
    };
    let t = tls.into_inner();
    let sni_mismatch = match t.sni_mismatch.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("421") => SniMismatch::Refuse,
        Some("allow") => SniMismatch::Allow,
        Some(other) => {
            return Err(invalid(
                t.sni_mismatch.as_ref().map(Spanned::span),
                "tls.sni_mismatch",
                format!("unknown value {other:?}; expected \"421\" or \"allow\""),
            ));
        }
    };
    let default_sni = match &t.default_sni {
        None => None,
        Some(d) => match crate::convert::host_pattern(d.get_ref()) {
            Ok(HostPattern::Exact(name)) => Some(name),
            Ok(HostPattern::Wildcard(_)) => {
                return Err(invalid(
                    Some(d.span()),
                    "tls.default_sni",
                    "expected one host name or IP address of a site, not a wildcard",
                ));
            }
            Err(m) => return Err(invalid(Some(d.span()), "tls.default_sni", m)),
        },
    };
    let on_demand = match t.on_demand {
        None => None,
        Some(od) => {
            let span = od.span();
            let od = od.into_inner();
            if acme.is_none() {
                return Err(invalid(
                    Some(span),
                    "tls.on_demand",
                    "on-demand certificates come from ACME; set `acme_email` in [server] (or an [acme] table)",
                ));
            }
            if od.allow.is_empty() && od.ask.is_none() {
                return Err(invalid(
                    Some(span),
                    "tls.on_demand",
                    "set `allow` (names that may get a certificate) or `ask` (a URL that approves each name), \
                     so nobody can make the server order certificates for arbitrary names",
                ));
            }
            let mut allow = Vec::with_capacity(od.allow.len());
            for (i, a) in od.allow.iter().enumerate() {
                let key = format!("tls.on_demand.allow[{i}]");
                let pattern =
                    crate::convert::host_pattern(a.get_ref()).map_err(|m| invalid(Some(a.span()), &key, m))?;
                allow.push(match pattern {
                    HostPattern::Exact(s) => s,
                    HostPattern::Wildcard(s) => format!("*{s}"),
                });
            }
            let ask = match &od.ask {
                None => None,
                Some(u) => {
                    let ok = (u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://"))
                        && u.get_ref().parse::<http::Uri>().is_ok();
                    if !ok {
                        return Err(invalid(
                            Some(u.span()),
                            "tls.on_demand.ask",
                            "expected a URL such as \"http://127.0.0.1:9000/allowed\"",
                        ));
                    }
                    Some(u.get_ref().clone())
                }
            };
            let (limit, limit_window) = match &od.limit {
                None => (defaults::ON_DEMAND_LIMIT, defaults::ON_DEMAND_WINDOW),
                Some(l) => parse_limit(l.get_ref()).map_err(|m| invalid(Some(l.span()), "tls.on_demand.limit", m))?,
            };
            Some(OnDemand {
                allow,
                ask,
                per_name_interval: duration(
                    od.per_name_interval.as_ref(),
                    "tls.on_demand.per_name_interval",
                    defaults::ON_DEMAND_PER_NAME,
                )?,
                limit,
                limit_window,
            })
        }
    };
    Ok(Tls {
        acme,
        on_demand,
        sni_mismatch,
        default_sni,
    })
}

/// `"20/1h"` → (20, 1 h); `"20/h"` means the same.
fn parse_limit(s: &str) -> Result<(u32, Duration), String> {
    let hint = || format!("invalid limit {s:?}; expected COUNT/PERIOD such as \"20/1h\"");
    let (count, period) = s.split_once('/').ok_or_else(hint)?;
    let count: u32 = count.trim().parse().ok().filter(|c| *c > 0).ok_or_else(hint)?;
    let period = period.trim();
    let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
        period.to_owned()
    } else {
        format!("1{period}")
    };
    let window = units::duration(&period).map_err(|_| hint())?;
    if window.is_zero() {
        return Err(hint());
    }
    Ok((count, window))
}

/// Names the internal CA serves by default: they can never get a public certificate.
fn is_local(pattern: &HostPattern) -> bool {
    let name = match pattern {
        HostPattern::Exact(s) => s.as_str(),
        HostPattern::Wildcard(s) => s.as_str(),
    };
    name == "localhost"
        || name.ends_with(".localhost")
        || name.ends_with(".test")
        || name.starts_with('[')
        || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// What convert needs to know about the rest of the config to check a site.
pub(crate) struct SiteContext<'a> {
    pub(crate) key: &'a str,
    pub(crate) hosts: &'a [HostPattern],
    pub(crate) host_spans: Vec<std::ops::Range<usize>>,
    pub(crate) https: bool,
    pub(crate) acme: bool,
    pub(crate) base_dir: &'a Path,
}

/// A site's `tls`, `hsts` and `redirect_https`.
pub(crate) fn convert_site(
    tls: Option<&Spanned<file::SiteTlsFile>>,
    hsts: Option<&Spanned<toml::Value>>,
    redirect_https: Option<&Spanned<bool>>,
    cx: &SiteContext<'_>,
) -> Result<(SiteTls, Option<Duration>, bool), RawError> {
    let key = cx.key;
    let mode = match tls {
        None => {
            if !cx.https || cx.hosts.is_empty() {
                SiteTls::Off
            } else if cx.hosts.iter().all(is_local) {
                SiteTls::Internal
            } else if cx.acme
                && cx
                    .hosts
                    .iter()
                    .all(|h| matches!(h, HostPattern::Exact(_)) && !is_local(h))
            {
                SiteTls::Acme
            } else {
                SiteTls::Off
            }
        }
        Some(t) => {
            let tkey = format!("{key}.tls");
            let mode = match t.get_ref() {
                file::SiteTlsFile::Mode(m) => match m.as_str() {
                    "off" => SiteTls::Off,
                    "acme" => SiteTls::Acme,
                    "internal" => SiteTls::Internal,
                    other => {
                        return Err(invalid(
                            Some(t.span()),
                            tkey,
                            format!(
                                "unknown mode {other:?}; expected \"acme\", \"internal\", \"off\" \
                                 or {{ cert = \"…\", key = \"…\" }}"
                            ),
                        ));
                    }
                },
                file::SiteTlsFile::Files { cert, key: k } => {
                    if cert.is_empty() || k.is_empty() {
                        return Err(invalid(Some(t.span()), tkey, "`cert` and `key` are PEM file paths"));
                    }
                    SiteTls::Files {
                        cert: crate::convert::resolve_path(cx.base_dir, cert),
                        key: crate::convert::resolve_path(cx.base_dir, k),
                    }
                }
            };
            if mode != SiteTls::Off {
                if !cx.https {
                    return Err(invalid(
                        Some(t.span()),
                        tkey,
                        "there is no HTTPS listener; add `https = [\"0.0.0.0:443\"]` to [server]",
                    ));
                }
                if cx.hosts.is_empty() {
                    return Err(invalid(
                        Some(t.span()),
                        tkey,
                        "a certificate needs host names; list them in `hosts`",
                    ));
                }
            }
            if mode == SiteTls::Acme {
                if !cx.acme {
                    return Err(invalid(
                        Some(t.span()),
                        tkey,
                        "ACME needs an account: set `acme_email` in [server] (or an [acme] table)",
                    ));
                }
                for (j, (h, span)) in cx.hosts.iter().zip(&cx.host_spans).enumerate() {
                    let hkey = format!("{key}.hosts[{j}]");
                    if matches!(h, HostPattern::Wildcard(_)) {
                        return Err(invalid(
                            Some(span.clone()),
                            hkey,
                            "a wildcard certificate needs the DNS-01 challenge, which gatehouse does not do; \
                             use `tls = { cert = \"…\", key = \"…\" }` with a certificate made elsewhere",
                        ));
                    }
                    if is_local(h) {
                        return Err(invalid(
                            Some(span.clone()),
                            hkey,
                            "a public CA cannot issue for localhost, .localhost, .test or IP addresses; \
                             use `tls = \"internal\"`",
                        ));
                    }
                }
            }
            mode
        }
    };
    let tls_on = mode != SiteTls::Off;
    let hsts = match hsts {
        None => matches!(mode, SiteTls::Acme | SiteTls::Files { .. }).then_some(defaults::HSTS_MAX_AGE),
        Some(v) => {
            let hkey = format!("{key}.hsts");
            let value = match v.get_ref() {
                toml::Value::Boolean(false) => None,
                toml::Value::Boolean(true) => Some(defaults::HSTS_MAX_AGE),
                toml::Value::String(s) => Some(
                    units::duration(s)
                        .ok()
                        .filter(|d| d.as_secs() > 0)
                        .ok_or_else(|| invalid(Some(v.span()), &hkey, "expected a max-age such as \"1y\", or false"))?,
                ),
                _ => {
                    return Err(invalid(
                        Some(v.span()),
                        hkey,
                        "expected a max-age such as \"1y\", or false",
                    ));
                }
            };
            if value.is_some() && !tls_on {
                return Err(invalid(
                    Some(v.span()),
                    hkey,
                    "HSTS is sent over HTTPS only; this site has `tls = \"off\"`",
                ));
            }
            if value.is_some() && mode == SiteTls::Internal {
                return Err(invalid(
                    Some(v.span()),
                    hkey,
                    "HSTS on a development name would make browsers refuse it over plain HTTP for every port; \
                     it is not sent for `tls = \"internal\"` sites",
                ));
            }
            value
        }
    };
    let redirect = match redirect_https {
        None => tls_on,
        Some(r) => {
            if *r.get_ref() && !tls_on {
                return Err(invalid(
                    Some(r.span()),
                    format!("{key}.redirect_https"),
                    "this site has no TLS to redirect to; set `tls` or remove `redirect_https`",
                ));
            }
            *r.get_ref()
        }
    };
    Ok((mode, hsts, redirect))
}
