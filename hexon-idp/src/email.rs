//! Sign-in codes and magic links by email (SMTP with lettre).
//!
//! A request from the login page stores, under the browser's flow cookie,
//! the user, a six-digit code and a link token (both as SHA-256), for
//! `ttl`. The code works in that flow; the link only in the browser that
//! asked (it must present the same flow cookie), so a link forwarded,
//! intercepted or fetched by a mail scanner signs nobody in. Both are
//! single use; five wrong codes end the attempt.

use hexon_core::config::EmailLoginConfig;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use rand_core::{OsRng, RngCore as _};

/// Wrong codes allowed per attempt.
pub const MAX_CODE_ATTEMPTS: u32 = 5;

/// Sends sign-in mail.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer for `[login.email]`.
    pub fn new(config: &EmailLoginConfig) -> Result<Mailer, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .map_err(|e| format!("login.email.smtp_url: {e}"))?
            .timeout(Some(std::time::Duration::from_secs(20)))
            .build();
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|e| format!("login.email.from: {e}"))?;
        Ok(Mailer { transport, from })
    }

    /// Send `body` to `to` with `subject`.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), String> {
        let to = to
            .parse::<Mailbox>()
            .map_err(|e| format!("recipient: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| format!("building the message: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("sending: {e}"))
    }
}

/// A six-digit code, uniformly drawn.
pub fn new_code() -> String {
    loop {
        let n = OsRng.next_u32();
        // Reject the top sliver so every code is equally likely.
        if n < u32::MAX - (u32::MAX % 1_000_000) {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..1000 {
            let c = new_code();
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn the_mailer_takes_smtp_urls() {
        let config = |from: &str| -> EmailLoginConfig {
            serde_json::from_value(serde_json::json!({
                "smtp_url": "smtp://127.0.0.1:2525", "from": from, "ttl": "10m"
            }))
            .unwrap()
        };
        assert!(Mailer::new(&config("Example <login@example.com>")).is_ok());
        assert!(Mailer::new(&config("not an address")).is_err());
    }
}
