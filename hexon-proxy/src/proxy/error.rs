//! Proxy errors: configuration errors, and how forwarding failures map to
//! status codes (the client only ever sees the status and the request id).

use std::error::Error as StdError;
use std::fmt;

use http::StatusCode;

/// An upstream or group that cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The base URL is not usable.
    #[error("upstream {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TLS settings (CA bundle, client certificate) are not usable.
    #[error("upstream TLS: {0}")]
    Tls(String),
}

/// Connecting (TCP and TLS) took longer than the connect timeout.
#[derive(Debug)]
pub(crate) struct ConnectTimeout;

impl fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connect timeout")
    }
}

impl StdError for ConnectTimeout {}

/// The request body grew past the group's limit.
#[derive(Debug)]
pub(crate) struct BodyTooLarge;

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body over the size limit")
    }
}

impl StdError for BodyTooLarge {}

/// The response body stalled or outlived the total timeout.
#[derive(Debug)]
pub(crate) enum BodyTimeout {
    /// No frame for longer than the idle timeout.
    Idle,
    /// The total timeout expired.
    Total,
}

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyTimeout::Idle => f.write_str("upstream body idle timeout"),
            BodyTimeout::Total => f.write_str("upstream total timeout"),
        }
    }
}

impl StdError for BodyTimeout {}

/// The status a forwarding error turns into: 413 when our own body limit
/// cut the upload, 504 for timeouts, 502 for everything else (refused,
/// reset, TLS failure, protocol error).
pub(crate) fn status_for(err: &(dyn StdError + 'static)) -> StatusCode {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTooLarge>() {
            return StatusCode::PAYLOAD_TOO_LARGE;
        }
        if e.is::<ConnectTimeout>() || e.is::<BodyTimeout>() {
            return StatusCode::GATEWAY_TIMEOUT;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return StatusCode::GATEWAY_TIMEOUT;
            }
        }
        cur = e.source();
    }
    StatusCode::BAD_GATEWAY
}

/// Displays an error with all its sources, `a: b: c`, for the logs.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(Box<dyn StdError + Send + Sync>);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn statuses_follow_the_source_chain() {
        assert_eq!(
            status_for(&Wrap(Box::new(ConnectTimeout))),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            status_for(&Wrap(Box::new(BodyTooLarge))),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            status_for(&Wrap(Box::new(refused))),
            StatusCode::BAD_GATEWAY
        );
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(
            status_for(&Wrap(Box::new(timed_out))),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            Chain(&Wrap(Box::new(ConnectTimeout))).to_string(),
            "wrapped: connect timeout"
        );
    }
}
