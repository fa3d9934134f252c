//! Request path normalisation and path patterns.
//!
//! Paths are matched segment by segment on a *normalised* form: percent-escapes
//! decoded, repeated slashes collapsed, a trailing slash ignored. Anything a
//! backend could interpret differently from the gateway (dot-segments, encoded
//! separators, NUL, backslashes) is refused instead of guessed.

use std::borrow::Cow;

use super::error::RequestError;

/// Normalise a request path: the result is `/` or `/seg(/seg)*` with non-empty,
/// percent-decoded segments. A query (`?…`) or fragment is ignored.
pub(crate) fn normalize_path(path: &str) -> Result<Cow<'_, str>, RequestError> {
    let path = match path.find(['?', '#']) {
        Some(i) => path.get(..i).unwrap_or(""),
        None => path,
    };
    let Some(body) = path.strip_prefix('/') else {
        return Err(RequestError::PathNotAbsolute);
    };
    // Fast scan: is the path already in normal form?
    let mut clean = true;
    for seg in body.split('/') {
        if seg.is_empty() {
            // `//`, or a trailing `/` (but `/` alone is the root).
            if !body.is_empty() {
                clean = false;
            }
            continue;
        }
        for &b in seg.as_bytes() {
            match b {
                b'%' => clean = false,
                b'\\' | 0 => return Err(RequestError::ForbiddenCharacter),
                b if b < 0x20 || b == 0x7f => return Err(RequestError::ForbiddenCharacter),
                _ => {}
            }
        }
        if is_dot_segment(seg.as_bytes()) {
            return Err(RequestError::DotSegment);
        }
        if seg.contains(';') {
            return Err(RequestError::PathParameters);
        }
    }
    if clean {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut seg_buf: Vec<u8> = Vec::new();
    for seg in body.split('/').filter(|s| !s.is_empty()) {
        seg_buf.clear();
        decode_segment(seg.as_bytes(), &mut seg_buf)?;
        if is_dot_segment(&seg_buf) {
            return Err(RequestError::DotSegment);
        }
        out.push(b'/');
        out.extend_from_slice(&seg_buf);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| RequestError::NotUtf8)
}

fn is_dot_segment(seg: &[u8]) -> bool {
    // `..;x` is `..` to servlet containers (path parameters).
    let name = match seg.iter().position(|&b| b == b';') {
        Some(i) => seg.get(..i).unwrap_or(seg),
        None => seg,
    };
    name == b"." || name == b".."
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_segment(seg: &[u8], out: &mut Vec<u8>) -> Result<(), RequestError> {
    let mut it = seg.iter().copied();
    while let Some(b) = it.next() {
        let b = if b == b'%' {
            let hi = it.next().and_then(hex);
            let lo = it.next().and_then(hex);
            match (hi, lo) {
                (Some(h), Some(l)) => {
                    let v = (h << 4) | l;
                    match v {
                        b'/' | b'\\' => return Err(RequestError::EncodedSeparator),
                        _ => v,
                    }
                }
                _ => return Err(RequestError::BadPercentEncoding),
            }
        } else {
            b
        };
        if b == 0 || b == b'\\' || b < 0x20 || b == 0x7f {
            return Err(RequestError::ForbiddenCharacter);
        }
        out.push(b);
    }
    Ok(())
}

/// Split `a/b/c` into (`a`, `b/c`); `None` for the empty remainder.
#[inline]
pub(crate) fn split_first(rest: &str) -> Option<(&str, &str)> {
    if rest.is_empty() {
        return None;
    }
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// A compiled path pattern.
#[derive(Clone, Debug)]
pub(crate) enum PathPattern {
    /// These segments exactly.
    Exact(Box<[Box<str>]>),
    /// These segments, then anything (including nothing).
    Prefix(Box<[Box<str>]>),
    /// Literal leading segments, then a glob tail.
    Glob {
        lead: Box<[Box<str>]>,
        tail: Box<[GlobSeg]>,
    },
}

/// One segment of a glob tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GlobSeg {
    /// This segment exactly.
    Literal(Box<str>),
    /// `*`: any one segment.
    Any,
    /// A segment with `*` wildcards inside, e.g. `*.pdf`.
    Wild(Box<str>),
    /// `**`: any number of segments, zero included.
    AnyDepth,
}

impl GlobSeg {
    fn matches(&self, seg: &str) -> bool {
        match self {
            GlobSeg::Literal(l) => **l == *seg,
            GlobSeg::Any => true,
            GlobSeg::Wild(p) => wildcard_match(p.as_bytes(), seg.as_bytes()),
            GlobSeg::AnyDepth => true,
        }
    }
}

impl PathPattern {
    /// Parse a pattern as written in a [`RouteSpec`](super::spec::RouteSpec).
    pub(crate) fn parse(s: &str) -> Result<Self, &'static str> {
        let Some(body) = s.strip_prefix('/') else {
            return Err("must start with '/'");
        };
        if s.len() > 4096 {
            return Err("longer than 4096 bytes");
        }
        if body.is_empty() {
            return Ok(PathPattern::Exact(Box::new([])));
        }
        let segs: Vec<&str> = body.split('/').collect();
        for seg in &segs {
            if seg.is_empty() {
                return Err(
                    "empty segment ('//' or a trailing '/'; request paths are matched without them)",
                );
            }
            if seg.bytes().any(|b| b < 0x20 || b == 0x7f) {
                return Err("control character");
            }
            if seg.contains(['%', '\\', '?', '#']) {
                return Err(
                    "'%', '\\', '?' and '#' are not allowed (patterns match decoded paths; write characters literally)",
                );
            }
            if is_dot_segment(seg.as_bytes()) {
                return Err("'.' and '..' segments are not allowed");
            }
            if seg.contains("**") && *seg != "**" {
                return Err("'**' must be a whole segment");
            }
        }
        let wild_count = segs.iter().filter(|s| s.contains('*')).count();
        let owned = |v: &[&str]| -> Box<[Box<str>]> { v.iter().map(|s| Box::from(*s)).collect() };
        match segs.split_last() {
            Some((&"*", lead)) if wild_count == 1 => return Ok(PathPattern::Prefix(owned(lead))),
            _ => {}
        }
        if wild_count == 0 {
            return Ok(PathPattern::Exact(owned(&segs)));
        }
        let n_lead = segs.iter().take_while(|s| !s.contains('*')).count();
        let (lead, tail) = segs.split_at(n_lead.min(segs.len()));
        let mut t: Vec<GlobSeg> = Vec::with_capacity(tail.len());
        for seg in tail {
            let g = match *seg {
                "**" => GlobSeg::AnyDepth,
                "*" => GlobSeg::Any,
                s if s.contains('*') => GlobSeg::Wild(s.into()),
                s => GlobSeg::Literal(s.into()),
            };
            // `**/**` is `**`.
            if g == GlobSeg::AnyDepth && t.last() == Some(&GlobSeg::AnyDepth) {
                continue;
            }
            t.push(g);
        }
        Ok(PathPattern::Glob {
            lead: owned(lead),
            tail: t.into(),
        })
    }

    /// The literal leading segments (the trie key).
    pub(crate) fn lead(&self) -> &[Box<str>] {
        match self {
            PathPattern::Exact(s) | PathPattern::Prefix(s) => s,
            PathPattern::Glob { lead, .. } => lead,
        }
    }
}

/// Match a glob tail against `rest` (segments separated by `/`, no leading
/// slash; empty means no segments). Linear-time two-pointer algorithm, with
/// backtracking only to the last `**`: O(segments × pattern) worst case.
pub(crate) fn glob_match(pat: &[GlobSeg], text: &str) -> bool {
    fn next(text: &str, t: usize) -> Option<(&str, usize)> {
        let rest = text.get(t..)?;
        let (seg, tail) = split_first(rest)?;
        Some((seg, text.len() - tail.len()))
    }
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        let seg = next(text, t);
        match (pat.get(p), seg) {
            (Some(GlobSeg::AnyDepth), _) => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            (Some(g), Some((s, nt))) if g.matches(s) => {
                p += 1;
                t = nt;
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        match star {
            Some((sp, st)) => match next(text, st) {
                Some((_, nt)) => {
                    star = Some((sp, nt));
                    p = sp + 1;
                    t = nt;
                }
                None => return false,
            },
            None => return false,
        }
    }
}

/// `*` matches any run of bytes (within one segment); everything else is literal.
pub(crate) fn wildcard_match(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        match (pat.get(p), text.get(t)) {
            (Some(b'*'), _) => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            (Some(a), Some(b)) if a == b => {
                p += 1;
                t += 1;
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        match star {
            Some((sp, st)) if st < text.len() => {
                star = Some((sp, st + 1));
                p = sp + 1;
                t = st + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        for (i, o) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a//b/", "/a/b"),
            ("//", "/"),
            ("/a/", "/a"),
            ("/%61pi/x", "/api/x"),
            ("/a?x=/../", "/a"),
            ("/caf%C3%A9", "/café"),
            ("/a%25b", "/a%b"),
            ("/...", "/..."),
            ("/.a", "/.a"),
        ] {
            assert_eq!(normalize_path(i).unwrap(), o, "{i}");
        }
        assert!(matches!(normalize_path("/a/b"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn refuses_ambiguous_paths() {
        use RequestError::*;
        for (i, e) in [
            ("a/b", PathNotAbsolute),
            ("", PathNotAbsolute),
            ("*", PathNotAbsolute),
            ("/a/../b", DotSegment),
            ("/a/./b", DotSegment),
            ("/..", DotSegment),
            ("/a/%2e%2e/b", DotSegment),
            ("/a/.%2E", DotSegment),
            ("/a/..;x/b", DotSegment),
            ("/a%2fb", EncodedSeparator),
            ("/a%2Fb", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/a%00b", ForbiddenCharacter),
            ("/a\\b", ForbiddenCharacter),
            ("/a\0b", ForbiddenCharacter),
            ("/a%0ab", ForbiddenCharacter),
            ("/a%zz", BadPercentEncoding),
            ("/a%4", BadPercentEncoding),
            ("/a%", BadPercentEncoding),
            ("/a%ff", NotUtf8),
            ("/a%c3", NotUtf8),
        ] {
            assert_eq!(normalize_path(i), Err(e), "{i:?}");
        }
    }

    #[test]
    fn parses_patterns() {
        assert!(matches!(PathPattern::parse("/").unwrap(), PathPattern::Exact(s) if s.is_empty()));
        assert!(
            matches!(PathPattern::parse("/*").unwrap(), PathPattern::Prefix(s) if s.is_empty())
        );
        assert!(
            matches!(PathPattern::parse("/api/*").unwrap(), PathPattern::Prefix(s) if s.len() == 1)
        );
        assert!(
            matches!(PathPattern::parse("/a/b").unwrap(), PathPattern::Exact(s) if s.len() == 2)
        );
        match PathPattern::parse("/files/**/**/*.pdf").unwrap() {
            PathPattern::Glob { lead, tail } => {
                assert_eq!(&*lead, &[Box::<str>::from("files")]);
                assert_eq!(&*tail, &[GlobSeg::AnyDepth, GlobSeg::Wild("*.pdf".into())]);
            }
            p => panic!("{p:?}"),
        }
        for bad in [
            "", "api", "/a//b", "/a/", "/a/../b", "/a%2f", "/a**", "/a\\b", "/a?b",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn globs() {
        let g = |p: &str| match PathPattern::parse(p).unwrap() {
            PathPattern::Glob { tail, .. } => tail,
            p => panic!("{p:?}"),
        };
        assert!(glob_match(&g("/**"), ""));
        assert!(glob_match(&g("/**"), "a/b"));
        assert!(glob_match(&g("/**/*.pdf"), "x.pdf"));
        assert!(glob_match(&g("/**/*.pdf"), "a/b/x.pdf"));
        assert!(!glob_match(&g("/**/*.pdf"), "a/b/x.pdf/c"));
        assert!(glob_match(&g("/*/avatar"), "u1/avatar"));
        assert!(!glob_match(&g("/*/avatar"), "u1/x/avatar"));
        assert!(!glob_match(&g("/*/avatar"), "avatar"));
        assert!(glob_match(&g("/**/a/**/b"), "x/a/y/z/b"));
        assert!(!glob_match(&g("/**/a/**/b"), "x/a/y/z/c"));
        assert!(wildcard_match(b"*-*.pdf", b"a-b.pdf"));
        assert!(!wildcard_match(b"*-*.pdf", b"ab.pdf"));
        assert!(wildcard_match(b"*", b""));
        // Hostile: many segments, many wildcards — terminates quickly.
        let text = vec!["a"; 20_000].join("/");
        assert!(!glob_match(&g("/**/a/**/a/**/b"), &text));
        let long = "a".repeat(100_000);
        assert!(!wildcard_match(b"*a*a*a*b", long.as_bytes()));
    }
}
