//! `tcp://HOST:PORT`, `tls://HOST:PORT` and `udp://HOST:PORT` endpoints for `volley send` and
//! `volley sink`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// The transport named by a URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `tcp://`
    Tcp,
    /// `udp://`
    Udp,
    /// `tls://`: TLS over TCP.
    Tls,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Tls => "tls",
        })
    }
}

/// A parsed endpoint: the transport and every address the host resolved to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Transport.
    pub proto: Proto,
    /// Resolved addresses, in resolver order (never empty).
    pub addrs: Vec<SocketAddr>,
    /// The host as written (the TLS server name unless `--server-name` says otherwise).
    pub host: String,
}

/// Parses `tcp://HOST:PORT` or `udp://HOST:PORT`. `HOST` is a name, an IPv4 address or a
/// bracketed IPv6 address. With `default_port`, the port may be left out (`sink` binds port 0).
///
/// # Errors
/// A message naming the URL and what is wrong with it: unknown scheme, missing host or port,
/// a port that is not a number, or a host that does not resolve.
pub fn parse(url: &str, default_port: Option<u16>) -> Result<Endpoint, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!("{url:?}: expected tcp://HOST:PORT, tls://HOST:PORT or udp://HOST:PORT")
    })?;
    let proto = match scheme.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "tls" => Proto::Tls,
        other => {
            return Err(format!(
                "{url:?}: unknown scheme {other:?} (expected tcp://, tls:// or udp://)"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = split_host_port(rest).map_err(|e| format!("{url:?}: {e}"))?;
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .map_err(|_| format!("{url:?}: port {p:?} is not a number in 0..=65535"))?,
        (None, Some(d)) => d,
        (None, None) => {
            return Err(format!(
                "{url:?}: missing port (write {proto}://{host}:PORT)"
            ))
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: missing host"));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{url:?}: cannot resolve host {host:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{url:?}: host {host:?} resolved to no address"));
    }
    Ok(Endpoint {
        proto,
        addrs,
        host: host.to_owned(),
    })
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]`.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in IPv6 address".to_string())?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) if !p.is_empty() => Ok((host, Some(p))),
                _ => Err(format!("unexpected {after:?} after the IPv6 address")),
            },
        };
    }
    match s.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => {
            Err("an IPv6 address needs brackets: [::1]:PORT".to_string())
        }
        Some((_, "")) => Err("empty port".to_string()),
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((s, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let e = parse("tcp://127.0.0.1:9000", None).unwrap();
        assert_eq!(e.proto, Proto::Tcp);
        assert_eq!(e.addrs[0], "127.0.0.1:9000".parse().unwrap());
        let e = parse("udp://[::1]:53", None).unwrap();
        assert_eq!(e.proto, Proto::Udp);
        assert_eq!(e.addrs[0], "[::1]:53".parse().unwrap());
        assert!(parse("udp://localhost:53", None).is_ok());
        let e = parse("tls://localhost:8443", None).unwrap();
        assert_eq!((e.proto, e.host.as_str()), (Proto::Tls, "localhost"));
        assert_eq!(
            parse("tcp://127.0.0.1", Some(0)).unwrap().addrs[0].port(),
            0
        );
        assert!(parse("tcp://nope", None)
            .unwrap_err()
            .contains("missing port"));
        assert!(parse("foo://x:1", None)
            .unwrap_err()
            .contains("unknown scheme"));
        assert!(parse("127.0.0.1:1", None).is_err());
        assert!(parse("tcp://:1", None).is_err());
        assert!(parse("tcp://h:99999", None).is_err());
        assert!(parse("tcp://::1:5", None).is_err());
    }
}
