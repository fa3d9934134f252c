//! The compiled HTTP route index.
//!
//! Hosts: a hash map for exact hosts, a hash map of suffixes for `*.suffix`
//! wildcards (looked up once per label of the request host, longest first),
//! and one slot for `*`. Per host key, a segment trie: each node holds the
//! routes whose exact path ends there, the prefix routes rooted there and the
//! globs whose literal lead ends there. A lookup walks the trie as deep as the
//! request path goes and tries candidates deepest first, so its cost depends on
//! the path depth and the routes sharing a node, not on the number of routes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::ControlFlow;

use serde::Serialize;

use super::host::{HostPattern, suffixes};
use super::path::{GlobSeg, PathPattern, glob_match, split_first};

/// Which host tier a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HostTier {
    /// The route's host is exactly the request host.
    Exact,
    /// The route's host is `*.suffix` and the request host is a subdomain of it.
    Wildcard,
    /// The route's host is `*`.
    Any,
}

/// How a candidate's path pattern relates to the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PathKind {
    /// Exact path.
    Exact,
    /// Glob.
    Glob,
    /// Prefix (`/x/*`).
    Prefix,
}

/// FxHash: keys are configuration (hosts, path segments), requests only look
/// up, so a keyed hash buys nothing against flooding here and costs time.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    #[inline]
    fn write_u8(&mut self, b: u8) {
        self.write(&[b]);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type Map<V> = HashMap<Box<str>, V, BuildHasherDefault<FxHasher>>;

#[derive(Debug, Default)]
struct Node {
    children: Map<Node>,
    exact: Vec<usize>,
    globs: Vec<(Box<[GlobSeg]>, usize)>,
    prefix: Vec<usize>,
}

impl Node {
    fn insert(&mut self, pattern: &PathPattern, id: usize) {
        let mut node = self;
        for seg in pattern.lead() {
            node = node.children.entry(seg.clone()).or_default();
        }
        match pattern {
            PathPattern::Exact(_) => node.exact.push(id),
            PathPattern::Prefix(_) => node.prefix.push(id),
            PathPattern::Glob { tail, .. } => node.globs.push((tail.clone(), id)),
        }
    }

    /// Visit candidates in priority order; `f(id, kind, path_matched)` breaks with the choice.
    fn walk<F>(&self, rest: &str, f: &mut F) -> ControlFlow<usize>
    where
        F: FnMut(usize, PathKind, bool) -> ControlFlow<usize>,
    {
        match split_first(rest) {
            Some((seg, after)) => {
                if let Some(child) = self.children.get(seg) {
                    child.walk(after, f)?;
                }
            }
            None => {
                for &id in &self.exact {
                    f(id, PathKind::Exact, true)?;
                }
            }
        }
        for (tail, id) in &self.globs {
            f(*id, PathKind::Glob, glob_match(tail, rest))?;
        }
        for &id in &self.prefix {
            f(id, PathKind::Prefix, true)?;
        }
        ControlFlow::Continue(())
    }
}

/// Routes indexed by host and path.
#[derive(Debug, Default)]
pub(crate) struct RouteIndex {
    exact: Map<Node>,
    wildcard: Map<Node>,
    any: Option<Node>,
}

impl RouteIndex {
    /// Add a route; call in declaration order.
    pub(crate) fn insert(&mut self, host: &HostPattern, path: &PathPattern, id: usize) {
        let node = match host {
            HostPattern::Exact(h) => self.exact.entry(h.clone()).or_default(),
            HostPattern::Wildcard(s) => self.wildcard.entry(s.clone()).or_default(),
            HostPattern::Any => self.any.get_or_insert_with(Node::default),
        };
        node.insert(path, id);
    }

    /// Visit the candidates for a normalised host and path in priority order
    /// until `f` breaks; returns the id it broke with.
    ///
    /// `f(id, tier, kind, path_matched)`: `path_matched` is false only for a
    /// glob that does not match (reported so explain can list it).
    pub(crate) fn find<F>(&self, host: &str, path: &str, mut f: F) -> Option<usize>
    where
        F: FnMut(usize, HostTier, PathKind, bool) -> ControlFlow<usize>,
    {
        let rest = path.strip_prefix('/').unwrap_or(path);
        if let Some(node) = self.exact.get(host) {
            if let ControlFlow::Break(id) =
                node.walk(rest, &mut |id, k, m| f(id, HostTier::Exact, k, m))
            {
                return Some(id);
            }
        }
        if !self.wildcard.is_empty() {
            for suffix in suffixes(host) {
                if let Some(node) = self.wildcard.get(suffix) {
                    if let ControlFlow::Break(id) =
                        node.walk(rest, &mut |id, k, m| f(id, HostTier::Wildcard, k, m))
                    {
                        return Some(id);
                    }
                }
            }
        }
        if let Some(node) = &self.any {
            if let ControlFlow::Break(id) =
                node.walk(rest, &mut |id, k, m| f(id, HostTier::Any, k, m))
            {
                return Some(id);
            }
        }
        None
    }
}
