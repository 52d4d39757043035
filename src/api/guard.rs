//! Checks that keep web pages the user visits from using the service through the user's
//! browser:
//!
//! - **Host** (DNS rebinding). A page on `evil.example` can re-point that name at
//!   127.0.0.1 and then talk to a loopback service as if it were its own origin; the only
//!   trace is its name in `Host`. So when no API token is set, a request must name the
//!   service by an IP address, `localhost`, or a name given with `--allowed-hosts`; others
//!   get 403 `host_not_allowed`. With a token the check is unnecessary: the rebound page
//!   has a different origin from the dashboard, so it cannot read the token the dashboard
//!   keeps, and without the token it reaches only what is public anyway. The probes stay
//!   open, for health checks that name the service however their platform does.
//! - **Cross-site requests.** A state-changing request (POST, PUT, PATCH, DELETE, or a
//!   WebSocket handshake, which browsers never preflight) whose `Origin` is not the
//!   service's own host and port nor one of `--cors-origins`, or that the browser marks
//!   `Sec-Fetch-Site: cross-site`, gets 403 `cross_origin`. CORS alone does not stop them:
//!   a "simple" request is sent before the browser looks at any CORS header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Paths answered whatever the `Host`: container and load-balancer probes.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// What the checks allow; cheap to clone into every request.
#[derive(Debug, Clone)]
pub struct Guard(Arc<Settings>);

#[derive(Debug)]
struct Settings {
    /// Whether `Host` is checked (no API token is set).
    check_host: bool,
    /// Names allowed besides IP addresses and `localhost`, lower case, without ports.
    allowed_hosts: Vec<String>,
    /// Origins allowed to call from another site, as `--cors-origins` lists them.
    cors_origins: Vec<String>,
    cors_any: bool,
}

impl Guard {
    pub fn new(check_host: bool, allowed_hosts: &[String], cors_origins: &[String]) -> Self {
        let allowed_hosts = allowed_hosts
            .iter()
            .filter_map(|h| match parse_authority(h.trim())? {
                (HostName::Name(name), _) => Some(name),
                (HostName::Ip(_), _) => None,
            })
            .collect();
        let cors_origins: Vec<String> = cors_origins.iter().map(|o| normalize_origin(o)).collect();
        let cors_any = cors_origins.iter().any(|o| o == "*");
        Self(Arc::new(Settings { check_host, allowed_hosts, cors_origins, cors_any }))
    }

    fn host_allowed(&self, host: Option<&str>) -> bool {
        match host.and_then(parse_authority) {
            Some((HostName::Ip(_), _)) => true,
            Some((HostName::Name(name), _)) => name == "localhost" || self.0.allowed_hosts.contains(&name),
            None => false,
        }
    }

    /// Whether a request from `headers` with `method` comes from a page on another site.
    fn is_cross_origin(&self, method: &Method, headers: &HeaderMap, host: Option<&str>) -> bool {
        let changes_state = matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
        let websocket = headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if !changes_state && !websocket {
            return false;
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let Ok(origin) = origin.to_str() else { return true };
            let listed = self.0.cors_any || self.0.cors_origins.contains(&normalize_origin(origin));
            return !listed && !same_origin(origin, host);
        }
        headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    }
}

/// How `Host` names the service.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostName {
    Ip(IpAddr),
    /// Lower case, without a trailing dot.
    Name(String),
}

/// Splits `host[:port]`, `[v6][:port]` or `v4[:port]`; `None` when malformed.
fn parse_authority(value: &str) -> Option<(HostName, Option<u16>)> {
    let port = |p: &str| -> Option<Option<u16>> {
        match p {
            "" => Some(None),
            p => p.strip_prefix(':')?.parse().ok().map(Some),
        }
    };
    if let Some(rest) = value.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        return Some((HostName::Ip(ip.into()), port(after)?));
    }
    let (name, port) = match value.find(':') {
        Some(at) => (&value[..at], port(&value[at..])?),
        None => (value, None),
    };
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return Some((HostName::Ip(ip.into()), port));
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    valid.then_some((HostName::Name(name), port))
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Whether `origin` (`scheme://host[:port]`) is the service itself as `host` names it. A
/// `Host` without a port is taken to mean the scheme's default port, as a proxy that
/// terminates TLS in front of the service would send it.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let (Some((origin_name, origin_port)), Some((host_name, host_port))) =
        (parse_authority(authority), host.and_then(parse_authority))
    else {
        return false;
    };
    origin_name == host_name && origin_port.unwrap_or(default_port) == host_port.unwrap_or(default_port)
}

/// The authority the request was sent to: `Host`, or the URI's for HTTP/2.
fn host(req: &Request) -> Option<&str> {
    req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Refuses requests that fail the `Host` or cross-site check (403 in the contract's shape).
pub async fn check(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let host = host(&req);
    if guard.0.check_host && !PROBES.contains(&req.uri().path()) && !guard.host_allowed(host) {
        return ApiError::Refused {
            status: StatusCode::FORBIDDEN,
            code: "host_not_allowed",
            message: "this service answers only to IP addresses, localhost and the names given with --allowed-hosts (GRADSCOPE_ALLOWED_HOSTS)".to_owned(),
        }
        .into_response();
    }
    if guard.is_cross_origin(req.method(), req.headers(), host) {
        return ApiError::Refused {
            status: StatusCode::FORBIDDEN,
            code: "cross_origin",
            message: "requests that change state must come from this service's own pages or an origin given with --cors-origins (GRADSCOPE_CORS_ORIGINS)".to_owned(),
        }
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn hosts_parse_with_and_without_ports() {
        let ip = |s: &str| HostName::Ip(s.parse().expect("ip"));
        let name = |s: &str| HostName::Name(s.to_owned());
        assert_eq!(parse_authority("127.0.0.1:8080"), Some((ip("127.0.0.1"), Some(8080))));
        assert_eq!(parse_authority("[::1]:80"), Some((ip("::1"), Some(80))));
        assert_eq!(parse_authority("[::1]"), Some((ip("::1"), None)));
        assert_eq!(parse_authority("LocalHost."), Some((name("localhost"), None)));
        assert_eq!(parse_authority("evil.example:8080"), Some((name("evil.example"), Some(8080))));
        for bad in ["", "::1", "[::1", "[::1]x", "host:", "host:99999", "a b", "127.0.0.1:80:80", "[evil]:80"] {
            assert_eq!(parse_authority(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_addresses_localhost_and_listed_names_pass() {
        let guard = Guard::new(true, &["Dash.Example.".to_owned()], &[]);
        for ok in ["127.0.0.1:8080", "10.1.2.3", "[::1]:8080", "[fe80::1]", "localhost:8080", "dash.example:443"] {
            assert!(guard.host_allowed(Some(ok)), "{ok}");
        }
        for refused in ["evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io", "dash.example.evil", ""] {
            assert!(!guard.host_allowed(Some(refused)), "{refused}");
        }
        assert!(!guard.host_allowed(None));
    }

    #[test]
    fn cross_site_writes_are_recognised() {
        let guard = Guard::new(true, &[], &["https://app.example".to_owned()]);
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            map
        };
        let host = Some("127.0.0.1:8080");
        let cross = |method: Method, pairs: &[(&'static str, &'static str)]| {
            guard.is_cross_origin(&method, &headers(pairs), host)
        };
        assert!(cross(Method::POST, &[("origin", "http://evil.example")]));
        assert!(cross(Method::POST, &[("origin", "http://127.0.0.1:3000")]), "another port is another origin");
        assert!(cross(Method::DELETE, &[("origin", "null")]));
        assert!(cross(Method::POST, &[("sec-fetch-site", "cross-site")]));
        assert!(cross(Method::GET, &[("upgrade", "websocket"), ("origin", "http://evil.example")]));
        assert!(!cross(Method::POST, &[("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")]));
        assert!(!cross(Method::POST, &[("origin", "https://app.example/"), ("sec-fetch-site", "cross-site")]));
        assert!(!cross(Method::GET, &[("origin", "http://evil.example")]), "reads are CORS's business");
        assert!(!cross(Method::POST, &[]), "clients other than browsers send neither header");
        assert!(same_origin("https://gradscope.example", Some("gradscope.example")));
        assert!(same_origin("http://[::1]:8080", Some("[::1]:8080")));
        assert!(!same_origin("http://gradscope.example", Some("gradscope.example:8080")));
    }
}
