//! HMAC-SHA256 request signatures in API Gatekeeper's format, so its
//! existing clients (the `byteforge-hmac` Python package among them) work
//! unchanged:
//!
//! ```text
//! Authorization: HMAC client_id="…",timestamp="…",nonce="…",signature="<hex>"
//! signature = hex(HMAC-SHA256(secret, "{METHOD}\n{PATH}\n{TIMESTAMP}\n{NONCE}\n{BODY}"))
//! ```
//!
//! `PATH` is the request target as sent (path and query), `TIMESTAMP` Unix
//! seconds within ±300 s of the gateway's clock, `BODY` the raw body. The
//! nonce is remembered (put-if-absent in the shared KV store, for twice the
//! window) only once the signature has verified, so nobody can burn a
//! client's nonces with forged requests; a nonce seen before is a replay.
//!
//! The format does not cover the query separately from the path, nor any
//! header: it is what existing clients speak. New clients should prefer the
//! stronger RFC 9421 signatures (coming with the admin API).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Largest accepted `Authorization: HMAC …` value.
pub const MAX_HEADER: usize = 1024;
/// Accepted clock difference, seconds.
pub const WINDOW_SECS: i64 = 300;

/// The parameters of an `Authorization: HMAC …` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HmacParams<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// Unix seconds, as sent (it is signed as sent).
    pub timestamp: &'a str,
    /// The nonce.
    pub nonce: &'a str,
    /// The signature, decoded from hex.
    pub signature: Vec<u8>,
}

/// Why an HMAC header is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HmacError {
    /// Not `HMAC k="v",…` with the four parameters, once each.
    #[error("malformed HMAC authorization header")]
    Malformed,
    /// The timestamp is outside the window.
    #[error("HMAC timestamp outside the accepted window (±300 s)")]
    Stale,
}

fn value(v: &str) -> Option<&str> {
    let v = v.trim();
    let v = v.strip_prefix('"')?.strip_suffix('"')?;
    // No quoting inside values, and nothing that could make the signed
    // message ambiguous.
    (!v.is_empty()
        && v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
    .then_some(v)
}

/// Parse an `Authorization` value that starts with `HMAC `.
///
/// # Errors
/// [`HmacError::Malformed`].
pub fn parse(header: &str) -> Result<HmacParams<'_>, HmacError> {
    if header.len() > MAX_HEADER {
        return Err(HmacError::Malformed);
    }
    let rest = header.strip_prefix("HMAC ").ok_or(HmacError::Malformed)?;
    let (mut client_id, mut timestamp, mut nonce, mut signature) = (None, None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.split_once('=').ok_or(HmacError::Malformed)?;
        let slot = match k.trim() {
            "client_id" => &mut client_id,
            "timestamp" => &mut timestamp,
            "nonce" => &mut nonce,
            "signature" => &mut signature,
            _ => return Err(HmacError::Malformed),
        };
        if slot
            .replace(value(v).ok_or(HmacError::Malformed)?)
            .is_some()
        {
            return Err(HmacError::Malformed);
        }
    }
    let signature = signature.ok_or(HmacError::Malformed)?;
    if signature.len() != 64 {
        return Err(HmacError::Malformed);
    }
    let signature = decode_hex(signature).ok_or(HmacError::Malformed)?;
    let timestamp = timestamp.ok_or(HmacError::Malformed)?;
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(HmacError::Malformed);
    }
    Ok(HmacParams {
        client_id: client_id.ok_or(HmacError::Malformed)?,
        timestamp,
        nonce: nonce.ok_or(HmacError::Malformed)?,
        signature,
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| match p {
            [h, l] => Some(nibble(*h)? << 4 | nibble(*l)?),
            _ => None,
        })
        .collect()
}

impl HmacParams<'_> {
    /// Check the timestamp against `now` (Unix seconds).
    ///
    /// # Errors
    /// [`HmacError::Stale`].
    pub fn check_time(&self, now: i64) -> Result<(), HmacError> {
        let t: i64 = self.timestamp.parse().map_err(|_| HmacError::Malformed)?;
        if (t - now).abs() > WINDOW_SECS {
            return Err(HmacError::Stale);
        }
        Ok(())
    }

    /// The signed message for `method`, `target` (path and query as sent)
    /// and `body`.
    pub fn message(&self, method: &str, target: &str, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(
            method.len() + target.len() + self.timestamp.len() + self.nonce.len() + body.len() + 4,
        );
        for part in [method, target, self.timestamp, self.nonce] {
            m.extend_from_slice(part.as_bytes());
            m.push(b'\n');
        }
        m.extend_from_slice(body);
        m
    }
}

/// HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `signature` is the HMAC of `message` under `secret` (constant time).
pub fn verify(secret: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(message);
    mac.verify_slice(signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_what_byteforge_hmac_sends() {
        let h = format!(
            r#"HMAC client_id="billing",timestamp="1700000000",nonce="5f0c9a55-0d55-4c6e-9d2a-7c1f4f2a9a10",signature="{SIG}""#
        );
        let p = parse(&h).unwrap();
        assert_eq!(p.client_id, "billing");
        assert_eq!(p.timestamp, "1700000000");
        assert_eq!(p.signature.len(), 32);
        assert_eq!(p.check_time(1_700_000_300), Ok(()));
        assert_eq!(p.check_time(1_700_000_301), Err(HmacError::Stale));
        assert_eq!(p.check_time(1_699_999_699), Err(HmacError::Stale));
        assert_eq!(
            p.message("POST", "/api/x?y=1", b"{}"),
            b"POST\n/api/x?y=1\n1700000000\n5f0c9a55-0d55-4c6e-9d2a-7c1f4f2a9a10\n{}".to_vec()
        );
        // Spaces after commas are fine (other clients add them).
        let spaced = h.replace(",", ", ");
        assert_eq!(parse(&spaced).unwrap(), p);
    }

    #[test]
    fn hostile_headers_are_malformed() {
        let ok = format!(r#"HMAC client_id="a",timestamp="1",nonce="n",signature="{SIG}""#);
        assert!(parse(&ok).is_ok());
        for bad in [
            String::new(),
            "HMAC".into(),
            "HMAC ".into(),
            "hmac client_id=\"a\"".into(),
            ok.replace("client_id=\"a\",", ""),
            ok.replace("\"a\"", "a"),
            ok.replace("\"a\"", "\"\""),
            ok.replace("\"a\"", "\"a\\\"b\""),
            ok.replace("\"1\"", "\"-1\""),
            ok.replace("\"1\"", "\"1e3\""),
            ok.replace("\"1\"", "\"9999999999999\""),
            ok.replace(SIG, &SIG[..62]),
            ok.replace(SIG, &SIG.replace('0', "g")),
            format!("{ok},nonce=\"again\""),
            format!("{ok},extra=\"x\""),
            format!("{ok},"),
            ok.replace("nonce=\"n\"", &format!("nonce=\"{}\"", "n".repeat(300))),
            format!("{ok}{}", " ".repeat(MAX_HEADER)),
            ok.replace("\"a\"", "\"a\nb\""),
        ] {
            assert_eq!(parse(&bad), Err(HmacError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn sign_and_verify_agree_with_rfc_4231() {
        // RFC 4231 test case 2.
        let mac = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hexon_core::hex::encode(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &mac));
        assert!(!verify(b"Jeff", b"what do ya want for nothing?", &mac));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &mac));
        assert!(!verify(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac[..31]
        ));
    }
}
