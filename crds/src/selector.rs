//! Kubernetes label selectors, evaluated without the API server: kube's
//! [`kube::core::Selector`] does the matching; parsing adds the checks the API server's
//! own validation makes and kube's conversion does not (label keys and values, `In` and
//! `NotIn` with at least one value, `Exists` and `DoesNotExist` with none), so a selector
//! that got past an older schema is refused with a message instead of matching something
//! else.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::SelectorExt;

/// Why a label selector is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "{key:?} is not a valid label key (an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
    )]
    Key { key: String },
    #[error(
        "selector on {key:?}: {value:?} is not a valid label value (empty, or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
    )]
    Value { key: String, value: String },
    #[error("selector on {key:?}: operator {operator} needs at least one value")]
    NoValues { key: String, operator: String },
    #[error("selector on {key:?}: operator {operator} takes no values")]
    Values { key: String, operator: String },
    #[error("selector on {key:?}: unknown operator {operator:?} (In, NotIn, Exists, DoesNotExist)")]
    Operator { key: String, operator: String },
    /// kube's own conversion refused it (after the checks above, not expected).
    #[error("selector: {0}")]
    Kube(String),
}

/// A parsed selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(kube::core::Selector);

impl Selector {
    /// Parses a selector; `None` selects everything. Unknown operators, and `In`/`NotIn`
    /// without values, are errors rather than silently matching nothing.
    pub fn parse(sel: Option<&LabelSelector>) -> Result<Selector, SelectorError> {
        let Some(sel) = sel else {
            return Ok(Selector::default());
        };
        for (k, v) in sel.match_labels.iter().flatten() {
            check_key(k)?;
            check_value(k, v)?;
        }
        for e in sel.match_expressions.iter().flatten() {
            check_key(&e.key)?;
            let values = e.values.as_deref().unwrap_or_default();
            for v in values {
                check_value(&e.key, v)?;
            }
            let (key, operator) = (e.key.clone(), e.operator.clone());
            match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::NoValues { key, operator });
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::Values { key, operator });
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                _ => return Err(SelectorError::Operator { key, operator }),
            }
        }
        kube::core::Selector::try_from(sel.clone())
            .map(Selector)
            .map_err(|e| SelectorError::Kube(e.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.selects_all()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.matches(labels)
    }
}

/// A label name (a key's part after the prefix, or a non-empty value): 1 to 63 characters,
/// letters, digits, `-`, `_` and `.`, with a letter or digit at both ends.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS subdomain as a key prefix: at most 253 characters, dot-separated labels of lower
/// case letters, digits and `-`, each starting and ending with a letter or digit.
fn is_dns_subdomain(s: &str) -> bool {
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            b.first().is_some_and(edge)
                && b.last().is_some_and(edge)
                && b.iter().all(|c| edge(c) || *c == b'-')
        })
}

/// Is `key` a valid label key (`[prefix/]name`)?
pub fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// Is `value` a valid label value (empty, or a label name)?
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

fn check_key(key: &str) -> Result<(), SelectorError> {
    if is_label_key(key) {
        Ok(())
    } else {
        Err(SelectorError::Key { key: key.into() })
    }
}

fn check_value(key: &str, value: &str) -> Result<(), SelectorError> {
    if is_label_value(value) {
        Ok(())
    } else {
        Err(SelectorError::Value {
            key: key.into(),
            value: value.into(),
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
        type Expected = fn(&SelectorError) -> bool;
        let cases: [(LabelSelectorRequirement, Expected); 6] = [
            (expr("k", "Equals", &["v"]), |e| {
                matches!(e, SelectorError::Operator { .. })
            }),
            (expr("k", "In", &[]), |e| {
                matches!(e, SelectorError::NoValues { .. })
            }),
            (expr("k", "Exists", &["v"]), |e| {
                matches!(e, SelectorError::Values { .. })
            }),
            (expr("-k", "Exists", &[]), |e| {
                matches!(e, SelectorError::Key { .. })
            }),
            (expr("Example.com/k", "Exists", &[]), |e| {
                matches!(e, SelectorError::Key { .. })
            }),
            (expr("k", "In", &["no spaces"]), |e| {
                matches!(e, SelectorError::Value { .. })
            }),
        ];
        for (e, expected) in cases {
            let what = format!("{e:?}");
            let sel = LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            };
            let err = Selector::parse(Some(&sel)).unwrap_err();
            assert!(expected(&err), "{what}: {err}");
        }
    }

    #[test]
    fn malformed_match_labels_are_errors() {
        for (k, v) in [("bad key", "v"), ("k", "-v"), ("", "v"), ("a/b/c", "v")] {
            let sel = LabelSelector {
                match_labels: Some(labels(&[(k, v)])),
                match_expressions: None,
            };
            let err = Selector::parse(Some(&sel)).unwrap_err().to_string();
            assert!(err.contains("not a valid label"), "{k}={v}: {err}");
        }
    }

    /// The keys and values the parser accepts are exactly those the CRD schema's patterns
    /// (run by the API server's CEL, RE2 syntax) accept.
    #[test]
    fn the_parser_and_the_schema_agree_on_keys_and_values() {
        let key_re = regex::Regex::new(crate::schema::LABEL_KEY_RE).unwrap();
        let value_re = regex::Regex::new(crate::schema::LABEL_VALUE_RE).unwrap();
        let long = |n: usize| "a".repeat(n);
        let keys = [
            "app".to_string(),
            "app.kubernetes.io/name".into(),
            "ferrolb.io/ip-pool".into(),
            "A_b.c-D".into(),
            "a".into(),
            long(63),
            long(64),
            format!("{}/x", long(253)),
            format!("{}.{}.{}.{}/x", long(63), long(63), long(63), long(61)),
            "".into(),
            "-a".into(),
            "a-".into(),
            "a b".into(),
            "/a".into(),
            "a/".into(),
            "Example.com/a".into(),
            "ex_ample.com/a".into(),
            "ex..com/a".into(),
            "a/b/c".into(),
            "ä".into(),
        ];
        for k in &keys {
            let schema = key_re.is_match(k) && !(k.contains('/') && k.find('/') > Some(253));
            assert_eq!(is_label_key(k), schema, "key {k:?}");
        }
        for v in [
            "",
            "v",
            "V1.2_3-x",
            &long(63),
            &long(64),
            "-v",
            "v.",
            "a b",
            "a/b",
        ] {
            assert_eq!(is_label_value(v), value_re.is_match(v), "value {v:?}");
        }
    }
}
