//! The group graph: topological order, cycle and depth checks, ancestor sets.
//!
//! Groups are integer ids `0..n`. Everything here is iterative: no recursion,
//! so no stack overflow on deep or hostile graphs.

use std::sync::Arc;

use super::error::{DirectoryError, GroupPath};

/// The closure of the group graph.
#[derive(Debug, Default)]
pub(crate) struct Closure {
    /// Direct parents of each group (the groups it is a member of), sorted.
    pub(crate) parents: Vec<Box<[u32]>>,
    /// Direct children of each group (its member groups), sorted.
    pub(crate) children: Vec<Box<[u32]>>,
    /// Strict ancestors of each group (direct and inherited parents), sorted.
    pub(crate) ancestors: Vec<Box<[u32]>>,
}

fn slice(v: &[Box<[u32]>], i: u32) -> &[u32] {
    v.get(i as usize).map_or(&[], |s| s)
}

fn name(names: &[Arc<str>], i: u32) -> Arc<str> {
    names
        .get(i as usize)
        .cloned()
        .unwrap_or_else(|| Arc::from("?"))
}

/// Compute the closure of `parents` (child -> sorted, deduplicated parents).
pub(crate) fn close(
    parents: Vec<Box<[u32]>>,
    names: &[Arc<str>],
    max_depth: usize,
    max_groups: usize,
) -> Result<Closure, DirectoryError> {
    let n = parents.len();
    let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (c, ps) in (0u32..).zip(&parents) {
        for &p in ps.iter() {
            if let Some(v) = children.get_mut(p as usize) {
                v.push(c);
            }
        }
    }
    // Kahn's algorithm: a group is ready once all its parents are done.
    let mut pending: Vec<usize> = parents.iter().map(|p| p.len()).collect();
    let mut ready: Vec<u32> = (0u32..)
        .zip(&pending)
        .filter(|(_, d)| **d == 0)
        .map(|(g, _)| g)
        .collect();
    let mut order: Vec<u32> = Vec::with_capacity(n);
    while let Some(g) = ready.pop() {
        order.push(g);
        for &c in children.get(g as usize).map_or(&[][..], |v| v) {
            if let Some(d) = pending.get_mut(c as usize) {
                *d -= 1;
                if *d == 0 {
                    ready.push(c);
                }
            }
        }
    }
    if order.len() < n {
        return Err(DirectoryError::Cycle {
            path: GroupPath(find_cycle(&parents, &pending, names)),
        });
    }

    let mut ancestors: Vec<Box<[u32]>> = vec![Box::default(); n];
    let mut depth: Vec<usize> = vec![0; n];
    let mut acc: Vec<u32> = Vec::new();
    for &g in &order {
        let ps = slice(&parents, g);
        acc.clear();
        let mut d = 0;
        for &p in ps {
            acc.push(p);
            acc.extend_from_slice(slice(&ancestors, p));
            d = d.max(depth.get(p as usize).copied().unwrap_or(0) + 1);
        }
        if d > max_depth {
            return Err(DirectoryError::TooDeep {
                path: GroupPath(deepest_chain(g, &parents, &depth, names)),
                depth: d,
                limit: max_depth,
            });
        }
        acc.sort_unstable();
        acc.dedup();
        if acc.len() > max_groups {
            return Err(DirectoryError::TooManyGroups {
                member: name(names, g),
                count: acc.len(),
                limit: max_groups,
            });
        }
        if let Some(slot) = depth.get_mut(g as usize) {
            *slot = d;
        }
        if let Some(slot) = ancestors.get_mut(g as usize) {
            *slot = acc.as_slice().into();
        }
    }
    Ok(Closure {
        parents,
        children: children.into_iter().map(Vec::into_boxed_slice).collect(),
        ancestors,
    })
}

/// Find a cycle among the groups Kahn's algorithm could not order. Every such
/// group has a parent that is not ordered either, so walking up through
/// unordered parents must revisit a group.
fn find_cycle(parents: &[Box<[u32]>], pending: &[usize], names: &[Arc<str>]) -> Vec<Arc<str>> {
    let unordered = |g: u32| pending.get(g as usize).is_some_and(|d| *d > 0);
    let Some(start) = (0u32..).zip(pending).find(|(_, d)| **d > 0).map(|(g, _)| g) else {
        return Vec::new();
    };
    let mut pos: Vec<Option<usize>> = vec![None; parents.len()];
    let mut walk: Vec<u32> = Vec::new();
    let mut g = start;
    loop {
        if let Some(Some(at)) = pos.get(g as usize) {
            let mut path: Vec<Arc<str>> = walk
                .get(*at..)
                .unwrap_or(&[])
                .iter()
                .map(|&x| name(names, x))
                .collect();
            path.push(name(names, g));
            return path;
        }
        if let Some(slot) = pos.get_mut(g as usize) {
            *slot = Some(walk.len());
        }
        walk.push(g);
        match slice(parents, g).iter().copied().find(|&p| unordered(p)) {
            Some(p) => g = p,
            // Unreachable by the invariant above; report what we have.
            None => return walk.iter().map(|&x| name(names, x)).collect(),
        }
    }
}

/// The longest chain from `g` up to a root: `g -> parent -> ... -> root`.
fn deepest_chain(
    g: u32,
    parents: &[Box<[u32]>],
    depth: &[usize],
    names: &[Arc<str>],
) -> Vec<Arc<str>> {
    let d = |x: u32| depth.get(x as usize).copied().unwrap_or(0);
    let mut path = vec![name(names, g)];
    // `g`'s own depth is not stored yet: start from its deepest parent.
    let mut cur = slice(parents, g).iter().copied().max_by_key(|&p| d(p));
    while let Some(x) = cur {
        path.push(name(names, x));
        cur = slice(parents, x).iter().copied().max_by_key(|&p| d(p));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<Arc<str>> {
        (0..n).map(|i| Arc::from(format!("g{i}"))).collect()
    }

    fn parents(n: usize, edges: &[(u32, u32)]) -> Vec<Box<[u32]>> {
        let mut v = vec![Vec::new(); n];
        for &(c, p) in edges {
            v[c as usize].push(p);
        }
        v.into_iter()
            .map(|mut p| {
                p.sort_unstable();
                p.dedup();
                p.into_boxed_slice()
            })
            .collect()
    }

    #[test]
    fn deep_chain_is_iterative() {
        // 200_000 groups in one chain: no recursion, no stack overflow.
        let n = 200_000;
        let edges: Vec<(u32, u32)> = (0..n as u32 - 1).map(|i| (i, i + 1)).collect();
        let err = close(parents(n, &edges), &names(n), 32, usize::MAX).unwrap_err();
        assert!(
            matches!(err, DirectoryError::TooDeep { depth: 33, .. }),
            "{err}"
        );
        let long_cycle: Vec<(u32, u32)> = (0..n as u32).map(|i| (i, (i + 1) % n as u32)).collect();
        let err = close(parents(n, &long_cycle), &names(n), usize::MAX, usize::MAX).unwrap_err();
        match err {
            DirectoryError::Cycle { path } => assert_eq!(path.0.len(), n + 1),
            e => panic!("{e}"),
        }
    }
}
