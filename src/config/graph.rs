//! The dependency graph between programs (`after`, `requires`): start order in levels, and
//! cycle detection that names the whole cycle.
//!
//! The graph functions are pure (indices in, indices out) and unit-tested below; [`check`]
//! turns what they find into diagnostics at the places the reader noted. This file must not
//! read files or know about the supervisor: the supervisor applies the same edges at run time.

use std::collections::BTreeMap;
use std::path::Path;

use super::ProgramSpec;
use crate::error::diag::{Diagnostic, Place};

/// Program `i` starts after every program in `deps[i]` (indices into the same list).
pub(crate) type Deps = [Vec<usize>];

/// The start order in levels: every program of a level depends only on programs of earlier
/// levels, and the programs of one level start in parallel (each level in index order). A
/// cycle gives `Err` with its members, in edge order, starting at its lowest index.
pub(crate) fn levels(deps: &Deps) -> Result<Vec<Vec<usize>>, Vec<usize>> {
    if let Some(cycle) = find_cycle(deps) {
        return Err(cycle);
    }
    let mut level: Vec<Option<usize>> = vec![None; deps.len()];
    // Without a cycle, each pass settles at least one more program.
    while level.iter().any(Option::is_none) {
        for i in 0..deps.len() {
            if level[i].is_some() {
                continue;
            }
            let below: Option<Vec<usize>> = deps[i].iter().map(|&d| level[d]).collect();
            if let Some(below) = below {
                level[i] = Some(below.into_iter().max().map_or(0, |m| m + 1));
            }
        }
    }
    let depth = level.iter().flatten().max().map_or(0, |m| m + 1);
    let mut out = vec![Vec::new(); depth];
    for (i, l) in level.into_iter().enumerate() {
        out[l.expect("every level settled")].push(i);
    }
    Ok(out)
}

/// A cycle of the graph, if there is one: its members in edge order (each starts after the
/// next, the last after the first), starting at its lowest index. A self-reference is a cycle
/// of one.
pub(crate) fn find_cycle(deps: &Deps) -> Option<Vec<usize>> {
    // 0: not seen, 1: on the current path, 2: done.
    let mut mark = vec![0u8; deps.len()];
    let mut path = Vec::new();
    for start in 0..deps.len() {
        if let Some(c) = visit(deps, start, &mut mark, &mut path) {
            let low = (0..c.len()).min_by_key(|&k| c[k]).unwrap_or(0);
            let mut c = c;
            c.rotate_left(low);
            return Some(c);
        }
    }
    None
}

fn visit(deps: &Deps, i: usize, mark: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
    match mark[i] {
        2 => return None,
        1 => {
            let from = path.iter().position(|&p| p == i).expect("on the path");
            return Some(path[from..].to_vec());
        }
        _ => {}
    }
    mark[i] = 1;
    path.push(i);
    for &d in &deps[i] {
        if let Some(c) = visit(deps, d, mark, path) {
            return Some(c);
        }
    }
    path.pop();
    mark[i] = 2;
    None
}

/// Every edge of `programs` as indices: `after` and `requires` together (unknown names left
/// out: [`check`] reports them).
pub(crate) fn edges(programs: &[ProgramSpec]) -> Vec<Vec<usize>> {
    let names: Vec<&str> = programs.iter().map(|p| p.name.as_str()).collect();
    index_edges(&names, &named_edges(programs))
}

/// Every program's `after` and `requires` together, by name.
fn named_edges(programs: &[ProgramSpec]) -> Vec<Vec<&str>> {
    programs
        .iter()
        .map(|p| {
            p.after
                .iter()
                .chain(&p.requires)
                .map(String::as_str)
                .collect()
        })
        .collect()
}

/// The start order of `programs` in levels of names; empty when there is a cycle.
pub(crate) fn spec_order(programs: &[ProgramSpec]) -> Vec<Vec<String>> {
    let names: Vec<&str> = programs.iter().map(|p| p.name.as_str()).collect();
    start_order(&names, &named_edges(programs))
}

/// Edges by name (`named[i]`: what `names[i]` starts after) as indices into `names`, each list
/// sorted and without repeats; a name not in `names` is left out.
pub(crate) fn index_edges(names: &[&str], named: &[Vec<&str>]) -> Vec<Vec<usize>> {
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    named
        .iter()
        .map(|deps| {
            let mut v: Vec<usize> = deps.iter().filter_map(|n| index.get(n).copied()).collect();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect()
}

/// The start order of `names` with edges `named` (see [`index_edges`]) in levels of names;
/// empty when there is a cycle.
pub fn start_order(names: &[&str], named: &[Vec<&str>]) -> Vec<Vec<String>> {
    levels(&index_edges(names, named))
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.into_iter().map(|i| names[i].to_string()).collect())
        .collect()
}

/// Checks the edges of `programs`: an unknown name, a self-reference and a cycle are each
/// reported at the place of the edge (`places`, noted by the reader as
/// `program.NAME.KEY[DEP]`), every member of a cycle at its own edge. `main` names the file for
/// a problem without a place.
pub(crate) fn check(
    programs: &[ProgramSpec],
    places: &BTreeMap<String, Place>,
    main: &Path,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let at = |name: &str, dep: &str| -> (String, Option<&Place>) {
        for key in ["requires", "after"] {
            let noted = format!("program.{name}.{key}[{dep}]");
            if let Some(place) = places.get(&noted) {
                return (format!("program.{name}.{key}"), Some(place));
            }
        }
        (format!("program.{name}.after"), None)
    };
    for p in programs {
        for dep in p.after.iter().chain(&p.requires) {
            let (key, place) = at(&p.name, dep);
            if *dep == p.name {
                let message = "a program cannot depend on itself".to_string();
                out.push(Diagnostic::new(place, main, &key, message));
            } else if !programs.iter().any(|q| q.name == *dep) {
                let message = format!("there is no [program.{dep}] table");
                out.push(Diagnostic::new(place, main, &key, message));
            }
        }
    }
    let mut deps = edges(programs);
    // Self-references are reported above; look for longer cycles without them.
    for (i, d) in deps.iter_mut().enumerate() {
        d.retain(|&x| x != i);
    }
    if let Some(cycle) = find_cycle(&deps) {
        let names: Vec<&str> = cycle.iter().map(|&i| programs[i].name.as_str()).collect();
        let shown = format!("{} -> {}", names.join(" -> "), names[0]);
        for (k, &i) in cycle.iter().enumerate() {
            let next = names[(k + 1) % names.len()];
            let (key, place) = at(&programs[i].name, next);
            let message = format!("dependency cycle: {shown} (each starts after the next)");
            out.push(Diagnostic::new(place, main, &key, message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn independent_programs_form_one_level() {
        assert_eq!(levels(&[vec![], vec![], vec![]]), Ok(vec![vec![0, 1, 2]]));
    }

    #[test]
    fn a_chain_starts_one_level_per_link() {
        // 2 after 1 after 0.
        assert_eq!(
            levels(&[vec![], vec![0], vec![1]]),
            Ok(vec![vec![0], vec![1], vec![2]])
        );
    }

    #[test]
    fn a_program_starts_one_level_above_its_deepest_dependency() {
        // 3 after 0 and 2; 2 after 1.
        let deps = [vec![], vec![], vec![1], vec![0, 2]];
        assert_eq!(levels(&deps), Ok(vec![vec![0, 1], vec![2], vec![3]]));
    }

    #[test]
    fn programs_listed_before_their_dependencies_still_start_after_them() {
        let deps = [vec![1], vec![]];
        assert_eq!(levels(&deps), Ok(vec![vec![1], vec![0]]));
    }

    #[test]
    fn a_cycle_is_named_whole_from_its_lowest_member() {
        // 0 after 2, 2 after 1, 1 after 0; 3 outside it.
        let deps = [vec![2], vec![0], vec![1], vec![]];
        assert_eq!(find_cycle(&deps), Some(vec![0, 2, 1]));
        assert_eq!(levels(&deps), Err(vec![0, 2, 1]));
    }

    #[test]
    fn a_cycle_behind_an_acyclic_prefix_is_found() {
        // 0 after 1; 1 and 2 after each other.
        let deps = [vec![1], vec![2], vec![1]];
        assert_eq!(find_cycle(&deps), Some(vec![1, 2]));
    }

    #[test]
    fn a_self_reference_is_a_cycle_of_one() {
        assert_eq!(find_cycle(&[vec![], vec![1]]), Some(vec![1]));
    }

    #[test]
    fn a_diamond_is_no_cycle() {
        let deps = [vec![], vec![0], vec![0], vec![1, 2]];
        assert_eq!(find_cycle(&deps), None);
        assert_eq!(levels(&deps), Ok(vec![vec![0], vec![1, 2], vec![3]]));
    }
}
