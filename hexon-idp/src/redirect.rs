//! Where a browser may be sent back to after login: only configured hosts,
//! on the login host's scheme and port. Anything odd is refused, not
//! repaired.

use std::collections::BTreeSet;

use percent_encoding::percent_decode_str;

/// Longest return URL accepted.
pub const MAX_RETURN_URL: usize = 2048;

/// Hosts a browser may be returned to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReturnHosts {
    scheme: String,
    port: Option<u16>,
    exact: BTreeSet<String>,
    /// `.example.com` for `*.example.com` (one or more labels in front).
    suffixes: BTreeSet<String>,
}

/// A checked return URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnTo {
    /// Host name, lower case, without port.
    pub host: String,
    /// The URL to send the browser to (scheme, host, port, path, query).
    pub url: String,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "http" { 80 } else { 443 }
}

impl ReturnHosts {
    /// Hosts on `scheme` (`https`/`http`) and `port` (`None`: the scheme's
    /// default), from host patterns: `app.example.com` or `*.example.com`.
    /// `*` alone (any host) is ignored: returning a one-time code to any
    /// host would hand it to whoever owns that name.
    pub fn new<'a>(
        scheme: &str,
        port: Option<u16>,
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> ReturnHosts {
        let mut hosts = ReturnHosts {
            scheme: scheme.to_owned(),
            port: port.filter(|p| *p != default_port(scheme)),
            ..ReturnHosts::default()
        };
        for p in patterns {
            let p = p.trim().to_ascii_lowercase();
            if let Some(rest) = p.strip_prefix("*.") {
                if !rest.is_empty() && !rest.contains('*') {
                    hosts.suffixes.insert(format!(".{rest}"));
                }
            } else if !p.is_empty() && !p.contains('*') {
                hosts.exact.insert(p);
            }
        }
        hosts
    }

    /// Whether `host` (lower case, no port) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        self.exact.contains(host)
            || self
                .suffixes
                .iter()
                .any(|s| host.len() > s.len() && host.ends_with(s.as_str()))
    }

    /// Check a return URL: absolute, on the login scheme and port, to an
    /// allowed host, no user information, no backslashes, controls or
    /// spaces (raw or percent-encoded), no dot segments.
    pub fn check(&self, rd: &str) -> Result<ReturnTo, &'static str> {
        if rd.is_empty() || rd.len() > MAX_RETURN_URL {
            return Err("return URL empty or too long");
        }
        if rd
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'\\' || b >= 0x80)
        {
            return Err("return URL has spaces, controls, backslashes or non-ASCII");
        }
        let uri: http::Uri = rd.parse().map_err(|_| "return URL does not parse")?;
        if uri.scheme_str() != Some(self.scheme.as_str()) {
            return Err("return URL is not on the login scheme");
        }
        let authority = uri.authority().ok_or("return URL has no host")?;
        if authority.as_str().contains('@') {
            return Err("return URL has user information");
        }
        let port = authority
            .port_u16()
            .filter(|p| *p != default_port(&self.scheme));
        if port != self.port {
            return Err("return URL is on another port");
        }
        let host = authority.host().to_ascii_lowercase();
        if !self.allows(&host) {
            return Err("return host is not allowed");
        }
        let path = uri.path();
        if !path.starts_with('/') || path.starts_with("//") {
            return Err("return path must start with a single /");
        }
        // Decoded once (what a server sees): no dot segments, no encoded
        // backslashes, slashes-at-start or controls.
        let decoded = percent_decode_str(path).collect::<Vec<u8>>();
        if decoded.starts_with(b"//")
            || decoded
                .iter()
                .any(|b| *b < b' ' || *b == 0x7f || *b == b'\\')
            || decoded
                .split(|b| *b == b'/')
                .any(|seg| seg == b"." || seg == b"..")
        {
            return Err("return path has dot segments or encoded separators");
        }
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        let url = match port {
            Some(p) => format!("{}://{host}:{p}{pq}", self.scheme),
            None => format!("{}://{host}{pq}", self.scheme),
        };
        Ok(ReturnTo { host, url })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hosts() -> ReturnHosts {
        ReturnHosts::new(
            "https",
            None,
            [
                "app.example.com",
                "*.apps.example.com",
                "*",
                "Auth.Example.com",
            ],
        )
    }

    #[test]
    fn allowed_hosts_pass_with_path_and_query() {
        let h = hosts();
        let r = h.check("https://app.example.com/a/b?x=1&y=%2F").unwrap();
        assert_eq!(r.host, "app.example.com");
        assert_eq!(r.url, "https://app.example.com/a/b?x=1&y=%2F");
        assert_eq!(
            h.check("https://APP.example.com:443/").unwrap().url,
            "https://app.example.com/"
        );
        assert!(h.check("https://x.apps.example.com/").is_ok());
        assert!(h.check("https://a.b.apps.example.com/").is_ok());
        assert!(h.check("https://auth.example.com/login").is_ok());
    }

    #[test]
    fn open_redirect_attempts_are_refused() {
        let h = hosts();
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/relative",
            "https://app.example.com.evil.example/",
            "https://apps.example.com/", // the bare suffix is not *.
            "https://evilapps.example.com/",
            "https://app.example.com@evil.example/",
            "https://user:pw@app.example.com/",
            "https://app.example.com\\@evil.example/",
            "https:\\\\evil.example/",
            "https://app.example.com/\\evil.example",
            "https://app.example.com/%5Cevil.example",
            "https://app.example.com//evil.example/",
            "https://app.example.com/%2F%2Fevil.example",
            "https://app.example.com/%2f/evil.example",
            "https://app.example.com/../evil",
            "https://app.example.com/a/%2e%2e/b",
            "https://app.example.com/a/%2E/b",
            "https://app.example.com/a/..",
            "https://app.example.com/%0d%0aSet-Cookie:x",
            "https://app.example.com/\r\nx",
            "https://app.example.com/ x",
            "http://app.example.com/",
            "javascript:alert(1)",
            "data:text/html,hi",
            "https://app.example.com:8443/",
            "https://évil.example/",
            "https://app.example.com%2eevil.example/",
            "https://%61pp.example.com/",
            "",
        ] {
            assert!(h.check(bad).is_err(), "{bad:?} passed");
        }
        // Double encoding decodes once to literal text, which is harmless
        // on the same host: kept as is.
        assert_eq!(
            h.check("https://app.example.com/%252e%252e/x").unwrap().url,
            "https://app.example.com/%252e%252e/x"
        );
        assert!(
            h.check(&format!("https://app.example.com/{}", "a".repeat(3000)))
                .is_err()
        );
    }

    #[test]
    fn ports_must_match_the_login_host() {
        let h = ReturnHosts::new("https", Some(8443), ["app.localhost"]);
        assert!(h.check("https://app.localhost:8443/").is_ok());
        assert!(h.check("https://app.localhost/").is_err());
        assert!(h.check("https://app.localhost:9443/").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_never_leaves_the_allowed_hosts(rd in "\\PC{0,80}") {
            if let Ok(r) = hosts().check(&rd) {
                proptest::prop_assert!(hosts().allows(&r.host));
            }
        }
    }
}
