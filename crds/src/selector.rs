//! Kubernetes label selectors, evaluated without the API server.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// A parsed selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<(String, Op)>,
}

impl Selector {
    /// Parses a selector; `None` selects everything. Unknown operators, and `In`/`NotIn`
    /// without values, are errors rather than silently matching nothing.
    pub fn parse(sel: Option<&LabelSelector>) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        let Some(sel) = sel else {
            return Ok(Selector { reqs });
        };
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push((k.clone(), Op::In(BTreeSet::from([v.clone()]))));
        }
        for e in sel.match_expressions.iter().flatten() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let op = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "selector on {:?}: operator {} needs at least one value",
                        e.key, e.operator
                    ));
                }
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "selector on {:?}: operator {} takes no values",
                        e.key, e.operator
                    ));
                }
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(format!(
                        "selector on {:?}: unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)",
                        e.key
                    ));
                }
            };
            reqs.push((e.key.clone(), op));
        }
        Ok(Selector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|(k, op)| match op {
            Op::In(vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Op::NotIn(vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Op::Exists => labels.contains_key(k),
            Op::DoesNotExist => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn empty_and_absent_selectors_match_everything() {
        assert!(Selector::parse(None).unwrap().matches(&labels(&[])));
        let empty = LabelSelector::default();
        assert!(
            Selector::parse(Some(&empty))
                .unwrap()
                .matches(&labels(&[("a", "b")]))
        );
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("tier", "edge")])),
            match_expressions: Some(vec![
                expr("team", "In", &["a", "b"]),
                expr("legacy", "DoesNotExist", &[]),
                expr("env", "NotIn", &["prod"]),
                expr("owner", "Exists", &[]),
            ]),
        };
        let s = Selector::parse(Some(&sel)).unwrap();
        assert!(s.matches(&labels(&[("tier", "edge"), ("team", "a"), ("owner", "x")])));
        assert!(s.matches(&labels(&[
            ("tier", "edge"),
            ("team", "b"),
            ("owner", "x"),
            ("env", "dev")
        ])));
        assert!(!s.matches(&labels(&[("tier", "edge"), ("team", "c"), ("owner", "x")])));
        assert!(!s.matches(&labels(&[
            ("tier", "edge"),
            ("team", "a"),
            ("owner", "x"),
            ("legacy", "1")
        ])));
        assert!(!s.matches(&labels(&[
            ("tier", "edge"),
            ("team", "a"),
            ("owner", "x"),
            ("env", "prod")
        ])));
        assert!(!s.matches(&labels(&[("tier", "edge"), ("team", "a")])));
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for e in [
            expr("k", "Equals", &["v"]),
            expr("k", "In", &[]),
            expr("k", "Exists", &["v"]),
        ] {
            let sel = LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            };
            assert!(Selector::parse(Some(&sel)).is_err());
        }
    }
}
