//! The loader's decision, made before anything loads and kept free of I/O: given
//! what serves and what the repository holds, which versions to keep, load and
//! retire; and, once the loads are done, what serves and what the index says.

use crate::model::Version;
use crate::registry::ModelState;

/// Which versions a reconcile keeps as they are, loads, and retires.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    pub(crate) keep: Vec<Version>,
    pub(crate) load: Vec<Version>,
    pub(crate) retire: Vec<Version>,
}

/// `serving`: the versions that serve, with what they were loaded from; `wanted`:
/// the versions the policy picks from the repository, with what they would load
/// from. A wanted version loads when it is new or its source changed.
pub(crate) fn plan<S: PartialEq>(serving: &[(Version, S)], wanted: &[(Version, S)]) -> Plan {
    let mut p = Plan::default();
    for (v, source) in wanted {
        match serving.iter().find(|(s, _)| s == v) {
            Some((_, current)) if current == source => p.keep.push(*v),
            _ => p.load.push(*v),
        }
    }
    p.retire = serving
        .iter()
        .map(|(v, _)| *v)
        .filter(|v| !wanted.iter().any(|(w, _)| w == v))
        .collect();
    p
}

/// Which copy of a version serves after the loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The copy that served before.
    Current,
    /// The copy this reconcile loaded.
    New,
}

/// What serves once the loads are done, and the index lines of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settled {
    pub(crate) serving: Vec<(Version, Pick)>,
    pub(crate) retired: Vec<Version>,
    pub(crate) index: Vec<(Version, ModelState, String)>,
}

/// A failed load retires nothing: when any version failed, everything that
/// served goes on serving, and a version whose reload failed serves its
/// previous files.
pub(crate) fn settle(current: &[Version], plan: &Plan, failed: &[(Version, String)]) -> Settled {
    let failed_reason = |v: &Version| failed.iter().find(|(f, _)| f == v).map(|(_, r)| r);
    let mut serving: Vec<(Version, Pick)> = plan.keep.iter().map(|v| (*v, Pick::Current)).collect();
    for v in &plan.load {
        if failed_reason(v).is_none() {
            serving.push((*v, Pick::New));
        } else if current.contains(v) {
            serving.push((*v, Pick::Current));
        }
    }
    if !failed.is_empty() {
        for v in current {
            if !serving.iter().any(|(s, _)| s == v) {
                serving.push((*v, Pick::Current));
            }
        }
    }
    serving.sort_by_key(|(v, _)| *v);
    let mut index: Vec<(Version, ModelState, String)> = serving
        .iter()
        .map(|(v, _)| {
            let reason = failed_reason(v)
                .map(|r| format!("serving its previous files; reload failed: {r}"))
                .unwrap_or_default();
            (*v, ModelState::Ready, reason)
        })
        .collect();
    for (v, reason) in failed {
        if !serving.iter().any(|(s, _)| s == v) {
            index.push((*v, ModelState::Unavailable, reason.clone()));
        }
    }
    let retired = current
        .iter()
        .filter(|v| !serving.iter().any(|(s, _)| s == *v))
        .copied()
        .collect();
    Settled {
        serving,
        retired,
        index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[u64]) -> Vec<Version> {
        list.iter().map(|&n| Version(n)).collect()
    }

    fn with(list: &[(u64, &'static str)]) -> Vec<(Version, &'static str)> {
        list.iter().map(|&(n, s)| (Version(n), s)).collect()
    }

    #[test]
    fn keeps_unchanged_loads_new_and_changed_retires_the_rest() {
        let p = plan(
            &with(&[(1, "a"), (2, "b"), (3, "c")]),
            &with(&[(2, "b"), (3, "c2"), (4, "d")]),
        );
        assert_eq!(p.keep, v(&[2]));
        assert_eq!(p.load, v(&[3, 4]));
        assert_eq!(p.retire, v(&[1]));
        let first = plan(&with(&[]), &with(&[(1, "a")]));
        assert_eq!(
            (first.keep, first.load, first.retire),
            (v(&[]), v(&[1]), v(&[]))
        );
        let same = plan(&with(&[(1, "a")]), &with(&[(1, "a")]));
        assert_eq!((same.keep, same.load), (v(&[1]), v(&[])));
    }

    #[test]
    fn a_successful_reconcile_serves_the_plan() {
        let p = plan(&with(&[(1, "a"), (2, "b")]), &with(&[(2, "b"), (3, "c")]));
        let s = settle(&v(&[1, 2]), &p, &[]);
        assert_eq!(
            s.serving,
            [(Version(2), Pick::Current), (Version(3), Pick::New)]
        );
        assert_eq!(s.retired, v(&[1]));
        assert!(s
            .index
            .iter()
            .all(|(_, st, r)| *st == ModelState::Ready && r.is_empty()));
    }

    #[test]
    fn a_failed_load_retires_nothing() {
        // Version 3 is new and fails; version 2 changed and fails; 1 was to retire.
        let p = plan(&with(&[(1, "a"), (2, "b")]), &with(&[(2, "b2"), (3, "c")]));
        let failed = vec![
            (Version(2), "bad".to_string()),
            (Version(3), "worse".to_string()),
        ];
        let s = settle(&v(&[1, 2]), &p, &failed);
        assert_eq!(
            s.serving,
            [(Version(1), Pick::Current), (Version(2), Pick::Current)]
        );
        assert!(s.retired.is_empty());
        assert_eq!(
            s.index,
            [
                (Version(1), ModelState::Ready, String::new()),
                (
                    Version(2),
                    ModelState::Ready,
                    "serving its previous files; reload failed: bad".into()
                ),
                (Version(3), ModelState::Unavailable, "worse".into()),
            ]
        );
    }
}
