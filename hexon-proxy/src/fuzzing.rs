//! Entry points for the fuzz targets in `fuzz/` (not a public API).

use bytes::BytesMut;
use http::Method;

use crate::proxy::h1codec::{self, Chunked, Decoded, Framing, ProtocolError};

/// What one pass over an upstream answer yielded.
#[derive(Debug, PartialEq)]
enum Outcome {
    Head(http::StatusCode, Framing),
    Body(Vec<u8>, Option<http::HeaderMap>),
    NeedMore,
    Error(ProtocolError),
}

/// Read `input` as an upstream's answer (head, then a chunked or
/// length-delimited body), fed `step` bytes at a time.
fn read_answer(input: &[u8], method: &Method, step: usize) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut feed = |buf: &mut BytesMut| -> bool {
        if fed == input.len() {
            return false;
        }
        let n = step.min(input.len() - fed);
        buf.extend_from_slice(input.get(fed..fed + n).unwrap_or_default());
        fed += n;
        true
    };
    let mut fields = Vec::new();
    let head = loop {
        match h1codec::read_response_head(&mut buf, method, &mut fields) {
            Ok(Some(h)) => break h,
            Ok(None) if feed(&mut buf) => {}
            Ok(None) => {
                out.push(Outcome::NeedMore);
                return out;
            }
            Err(e) => {
                out.push(Outcome::Error(e));
                return out;
            }
        }
    };
    // The listener writes these fields as they are: each must be one a
    // header map accepts.
    for &f in &fields {
        let (name, value) = head.field(f);
        assert!(http::HeaderName::from_bytes(name).is_ok(), "{name:?}");
        assert!(http::HeaderValue::from_bytes(value).is_ok(), "{value:?}");
    }
    out.push(Outcome::Head(head.status, head.framing.clone()));
    let mut body = Vec::new();
    match head.framing {
        Framing::Chunked => {
            let mut dec = Chunked::default();
            loop {
                match dec.decode(&mut buf) {
                    Ok(Decoded::Data(d)) => {
                        assert!(!d.is_empty(), "empty data frame");
                        body.extend_from_slice(&d);
                    }
                    Ok(Decoded::Trailers(t)) => {
                        out.push(Outcome::Body(body, Some(t)));
                        return out;
                    }
                    Ok(Decoded::End) => {
                        out.push(Outcome::Body(body, None));
                        return out;
                    }
                    Ok(Decoded::NeedMore) if feed(&mut buf) => {}
                    Ok(Decoded::NeedMore) => {
                        out.push(Outcome::NeedMore);
                        return out;
                    }
                    Err(e) => {
                        out.push(Outcome::Error(e));
                        return out;
                    }
                }
            }
        }
        Framing::Length(n) => {
            while (body.len() as u64) < n {
                if buf.is_empty() && !feed(&mut buf) {
                    out.push(Outcome::NeedMore);
                    return out;
                }
                let take = buf
                    .len()
                    .min(usize::try_from(n).unwrap_or(usize::MAX) - body.len());
                body.extend_from_slice(&buf.split_to(take));
            }
            out.push(Outcome::Body(body, None));
        }
        Framing::Empty | Framing::Close => {}
    }
    out
}

/// Fuzz the upstream HTTP/1.1 response reader: never panics, never yields
/// more body than it was given, and the result does not depend on how the
/// bytes were split into reads.
pub fn h1_response(data: &[u8]) {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let method = if ctl & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let step = usize::from(ctl >> 1).max(1);
    let whole = read_answer(input, &method, input.len().max(1));
    // (Past the head limit, where the limit cuts depends on the reads.)
    if input.len() <= h1codec::MAX_HEAD {
        let split = read_answer(input, &method, step);
        assert_eq!(whole, split, "result depends on the read size");
    }
    for o in &whole {
        if let Outcome::Body(b, _) = o {
            assert!(b.len() <= input.len());
        }
    }
}
