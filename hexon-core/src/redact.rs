//! Secrets taken out of connection strings before they are shown (logs,
//! configuration dumps, `Debug`, error messages).
//!
//! Always compiled: the configuration model (`config::redact_url` is this
//! function) and the state backends both use it.

/// A URL (or a comma-separated list of URLs) with everything secret
/// replaced, for logs and dumps: the whole userinfo (a password, or a bare
/// token) and every query value (`?password=…` as much as `?sslmode=…`).
///
/// ```
/// use hexon_core::redact::redact_url;
///
/// assert_eq!(
///     redact_url("postgres://hexon:s3cret@db:5432/hexon?sslmode=require"),
///     "postgres://[redacted]@db:5432/hexon?sslmode=[redacted]"
/// );
/// assert_eq!(
///     redact_url("postgres://db/hx?user=u&password=s3cret"),
///     "postgres://db/hx?user=[redacted]&password=[redacted]"
/// );
/// ```
///
/// A part without a scheme (`host2/db?password=…` after a comma, as in a
/// multi-host PostgreSQL URL) is redacted the same way; text that is not a
/// URL at all is returned as it is.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(part: &str) -> String {
    let trimmed = part.trim_start();
    let lead = part.get(..part.len() - trimmed.len()).unwrap_or("");
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, trimmed),
    };
    // The authority ends at the first '/', '?' or '#' after the last '@'
    // (a password may itself contain '/' or '?').
    let after_at = rest.rfind('@').map_or(0, |i| i + 1);
    let end = rest
        .get(after_at..)
        .and_then(|r| r.find(['/', '?', '#']))
        .map_or(rest.len(), |i| i + after_at);
    let (authority, tail) = rest.split_at(end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("[redacted]@{host}"),
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) => format!("{k}=[redacted]"),
                    None => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{lead}{scheme}://{host}{tail}"),
        None => format!("{lead}{host}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn every_secret_part_is_replaced() {
        for (url, want) in [
            ("postgres://u:p@db/x", "postgres://[redacted]@db/x"),
            ("nats://TOKEN@h:4222", "nats://[redacted]@h:4222"),
            ("postgres://u:p/a?b@db/x", "postgres://[redacted]@db/x"),
            (
                "postgres://db/hx?user=u&password=s3cret",
                "postgres://db/hx?user=[redacted]&password=[redacted]",
            ),
            (
                "postgres://u:pw@h1:5432,h2:5433/db?password=pw2",
                "postgres://[redacted]@h1:5432,h2:5433/db?password=[redacted]",
            ),
            ("nats://10.0.0.5:4222", "nats://10.0.0.5:4222"),
            ("not a url", "not a url"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
