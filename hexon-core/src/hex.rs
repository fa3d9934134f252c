//! Lower-case hexadecimal, for digests and ids in logs, keys and headers.

/// `bytes` as lower-case hex, two digits a byte.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        let [hi, lo] = digits(b);
        out.push(char::from(hi));
        out.push(char::from(lo));
    }
    out
}

/// The two lower-case hex digits of `b`, as ASCII bytes.
#[inline]
pub fn digits(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let d = |n: u8| DIGITS.get(usize::from(n & 0x0f)).copied().unwrap_or(b'0');
    [d(b >> 4), d(b)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_lower_case_two_digits_a_byte() {
        assert_eq!(super::encode(&[]), "");
        assert_eq!(super::encode(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
