//! Host normalisation and host patterns.

use super::error::RequestError;

/// Longest host name we accept (DNS limit, and room for a bracketed IPv6 literal).
pub(crate) const MAX_HOST: usize = 253;

/// A compiled host pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// This host (lower-case, no trailing dot).
    Exact(Box<str>),
    /// Any subdomain of this suffix (stored without the `*.`), not the suffix itself.
    Wildcard(Box<str>),
    /// Any host.
    Any,
}

fn valid_dns(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_HOST {
        return Err("longer than 253 bytes");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("use letters, digits, '-', '_' and '.' (IDNs in their xn-- form)");
        }
    }
    Ok(())
}

fn valid_ipv6_literal(s: &str) -> bool {
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok())
}

impl HostPattern {
    /// Parse a pattern as written in a [`RouteSpec`](super::spec::RouteSpec).
    pub(crate) fn parse(s: &str) -> Result<Self, &'static str> {
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        let lower = s.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if lower.starts_with('[') {
            return if valid_ipv6_literal(lower) {
                Ok(HostPattern::Exact(lower.into()))
            } else {
                Err("not a valid bracketed IPv6 literal")
            };
        }
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err("'*' is only allowed as the whole first label (\"*.example.com\")");
            }
            valid_dns(suffix)?;
            return Ok(HostPattern::Wildcard(suffix.into()));
        }
        if lower.contains('*') {
            return Err(
                "'*' is only allowed alone or as the whole first label (\"*.example.com\")",
            );
        }
        if lower.contains(':') {
            return Err("a host pattern has no port (ports are ignored when matching)");
        }
        valid_dns(lower)?;
        Ok(HostPattern::Exact(lower.into()))
    }
}

/// Normalise a request host (`Host` header or URI authority host) into `buf`:
/// port stripped, one trailing dot removed, ASCII lower-cased. Fails on an
/// empty, over-long or malformed host.
pub(crate) fn normalize_host<'b>(
    host: &str,
    buf: &'b mut [u8; MAX_HOST + 3],
) -> Result<&'b str, RequestError> {
    let bad = RequestError::MalformedHost;
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']').ok_or(bad)?;
        let (n, rest) = host.split_at_checked(end + 1).ok_or(bad)?;
        (n, rest.strip_prefix(':'))
    } else if let Some((n, p)) = host.rsplit_once(':') {
        (n, Some(p))
    } else {
        (host, None)
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
    } else if host.len() != name.len() {
        // `[v6]junk`
        return Err(bad);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > buf.len() {
        return Err(bad);
    }
    let bracketed = name.starts_with('[');
    let mut prev_dot = true;
    for (slot, &b) in buf.iter_mut().zip(name.as_bytes()) {
        let ok = if bracketed {
            b.is_ascii_hexdigit() || b == b':' || b == b'.' || b == b'[' || b == b']'
        } else {
            let ok =
                b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !prev_dot);
            prev_dot = b == b'.';
            ok
        };
        if !ok {
            return Err(bad);
        }
        *slot = b.to_ascii_lowercase();
    }
    if !bracketed && (prev_dot || name.len() > MAX_HOST) {
        return Err(bad);
    }
    buf.get(..name.len())
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or(bad)
}

/// The wildcard suffixes of a normalised host, longest first:
/// `a.b.example.com` → `b.example.com`, `example.com`, `com`.
pub(crate) fn suffixes(host: &str) -> impl Iterator<Item = &str> {
    host.match_indices('.')
        .filter_map(move |(i, _)| host.get(i + 1..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(h: &str) -> Result<String, RequestError> {
        let mut buf = [0u8; MAX_HOST + 3];
        normalize_host(h, &mut buf).map(str::to_owned)
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(norm("App.Example.COM").unwrap(), "app.example.com");
        assert_eq!(norm("app.example.com.").unwrap(), "app.example.com");
        assert_eq!(norm("app.example.com:8443").unwrap(), "app.example.com");
        assert_eq!(norm("app.example.com.:443").unwrap(), "app.example.com");
        assert_eq!(norm("[::1]:8080").unwrap(), "[::1]");
        assert_eq!(norm("10.0.0.1").unwrap(), "10.0.0.1");
        for bad in [
            "",
            ":80",
            "a..b",
            ".a",
            "a b",
            "a:b",
            "a:",
            "a:123456",
            "[::1",
            "[::1]x",
            "a/b",
            "ä.example",
            "a.example.com..",
        ] {
            assert!(norm(bad).is_err(), "{bad:?}");
        }
        assert!(norm(&"a".repeat(254)).is_err());
        assert!(norm(&"a.".repeat(5000)).is_err());
        assert!(norm(&"a".repeat(1_000_000)).is_err());
    }

    #[test]
    fn parses_patterns() {
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        assert_eq!(
            HostPattern::parse("*.Example.com."),
            Ok(HostPattern::Wildcard("example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("App.example.com"),
            Ok(HostPattern::Exact("app.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("[::1]"),
            Ok(HostPattern::Exact("[::1]".into()))
        );
        for bad in [
            "", "*.", "a.*.com", "a*.com", "*.*.com", "a:80", "a b", "a..b", "[zz]",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        let s: Vec<_> = suffixes("a.b.example.com").collect();
        assert_eq!(s, ["b.example.com", "example.com", "com"]);
    }
}
