//! TOTP (RFC 6238): HMAC-SHA1, six digits, 30-second steps — what every
//! authenticator app speaks.
//!
//! Written here over the `hmac` crate (a dozen lines) rather than with a
//! TOTP crate because replay protection needs the *step* a code matched,
//! which the crates we looked at do not return: the step is stored as the
//! credential's counter and advanced with compare-and-set, so a code (or
//! any earlier code) is accepted once.

use hmac::{Hmac, Mac as _};
use rand_core::{OsRng, RngCore as _};
use sha1::Sha1;
use subtle::ConstantTimeEq as _;

/// Seconds per step.
pub const STEP: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps accepted either side of now (clock drift of phones).
pub const SKEW: u64 = 1;
/// Secret length in bytes (RFC 4226 recommends 160 bits).
pub const SECRET_LEN: usize = 20;

/// A new random secret.
pub fn new_secret() -> [u8; SECRET_LEN] {
    let mut s = [0u8; SECRET_LEN];
    OsRng.fill_bytes(&mut s);
    s
}

/// The code for `step` (RFC 4226 HOTP with the step as counter).
pub fn code_at(secret: &[u8], step: u64) -> u32 {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return u32::MAX; // HMAC takes keys of any length; never reached
    };
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    // Dynamic truncation (RFC 4226 §5.3): four bytes at the offset the last
    // nibble names (at most 15 + 4 of 20 bytes: always in range).
    let offset = usize::from(h.get(19).copied().unwrap_or(0) & 0x0f);
    let Some([b0, b1, b2, b3]) = h
        .get(offset..offset + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
    else {
        return u32::MAX;
    };
    let bin = u32::from_be_bytes([b0 & 0x7f, b1, b2, b3]);
    bin % 10u32.pow(DIGITS)
}

/// The step of Unix time `secs`.
pub fn step_of(secs: u64) -> u64 {
    secs / STEP
}

/// The step `code` matches at time `secs` (within ±[`SKEW`] steps), if any,
/// and only if it is later than `last_used` (the step of the last accepted
/// code: a code is good once). Every candidate is compared in constant time.
pub fn matching_step(secret: &[u8], code: &str, secs: u64, last_used: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_of(secs);
    let mut found = None;
    for step in now.saturating_sub(SKEW)..=now.saturating_add(SKEW) {
        let expected = format!("{:0width$}", code_at(secret, step), width = DIGITS as usize);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && step > last_used {
            found.get_or_insert(step);
        }
    }
    found
}

/// Base32 (no padding), as authenticator apps take secrets.
pub fn base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The `otpauth://` URI an authenticator app scans.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let issuer_enc = utf8_percent_encode(issuer, NON_ALPHANUMERIC);
    let account_enc = utf8_percent_encode(account, NON_ALPHANUMERIC);
    format!(
        "otpauth://totp/{issuer_enc}:{account_enc}?secret={}&issuer={issuer_enc}&algorithm=SHA1&digits={DIGITS}&period={STEP}",
        base32(secret)
    )
}

/// `uri` as an inline SVG QR code (dark modules on white, scales with CSS).
pub fn qr_svg(uri: &str) -> Option<String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (8 digits there; the last six here).
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (t, eight) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            let six = &eight[2..];
            assert_eq!(
                format!("{:06}", code_at(secret, step_of(t))),
                six,
                "t = {t}"
            );
            assert_eq!(matching_step(secret, six, t, 0), Some(step_of(t)));
        }
    }

    #[test]
    fn a_code_is_good_once_and_only_near_its_time() {
        let secret = new_secret();
        let t = 1_700_000_000u64;
        let code = format!("{:06}", code_at(&secret, step_of(t)));
        let step = matching_step(&secret, &code, t, 0).unwrap();
        // Replay: the same step (or older) was used.
        assert_eq!(matching_step(&secret, &code, t, step), None);
        // One step of drift either way is accepted, two are not.
        assert_eq!(matching_step(&secret, &code, t + STEP, 0), Some(step));
        assert_eq!(matching_step(&secret, &code, t - STEP, 0), Some(step));
        assert_eq!(matching_step(&secret, &code, t + 2 * STEP, 0), None);
        // Another secret's code.
        assert_eq!(matching_step(&new_secret(), &code, t, 0), None);
    }

    #[test]
    fn malformed_codes_are_refused() {
        let secret = new_secret();
        for bad in [
            "",
            "12345",
            "1234567",
            "12a456",
            "１２３４５６",
            "123 456",
            "-12345",
        ] {
            assert_eq!(
                matching_step(&secret, bad, 1_700_000_000, 0),
                None,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn enrolment_uri_and_qr() {
        let uri = otpauth_uri("Hexon & Co", "alice@example.com", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/Hexon%20%26%20Co:alice%40example%2Ecom?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Hexon%20%26%20Co&algorithm=SHA1&digits=6&period=30"
        );
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_code(code in ".{0,40}", t in 0u64..u64::MAX / 2, last in 0u64..u64::MAX) {
            let _ = matching_step(b"12345678901234567890", &code, t, last);
        }
    }
}
