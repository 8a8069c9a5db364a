//! Hand-written OpenAPI fragments for fields whose validation the API server must enforce
//! (CEL rules), or whose list semantics matter for server-side apply.
//!
//! The rules only use CEL libraries that Kubernetes 1.34+ enables for CRDs: the IP/CIDR
//! library (`isIP`, `isCIDR`, `ip()`, `cidr()`), strings (`split`) and `lists.range`.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::json;

/// Longest entry we accept: a fully written IPv6 range is 79 characters.
pub const MAX_ADDRESS_LEN: u64 = 100;
/// Most entries in one pool; bounds the cost of the CEL rules per object.
pub const MAX_ADDRESSES: u64 = 128;

/// The two ends of a `first-last` range. `substring` keeps the API server's cost estimate
/// bounded by the entry's `maxLength`, where `split` would leave element sizes unknown.
const FIRST: &str = "self.substring(0, self.indexOf('-'))";
const LAST: &str = "self.substring(self.indexOf('-') + 1)";

/// True when `self` looks like `first-last` with two IPs.
fn is_range() -> String {
    format!("(self.indexOf('-') > 0 && isIP({FIRST}) && isIP({LAST}))")
}

/// The CEL rules for one `spec.addresses` entry, as `(rule, messageExpression)` pairs.
pub fn address_rules() -> Vec<(String, String)> {
    let range = is_range();
    let shape = format!("isIP(self) || isCIDR(self) || {range}");
    let masked = "!isCIDR(self) || cidr(self).ip() == cidr(self).masked().ip()".to_string();
    let family = format!("!{range} || ip({FIRST}).family() == ip({LAST}).family()");
    // first > last iff, at the first bit where they differ, `first` has a 1. For each prefix
    // length n, `first/n` containing `last` while `first/(n+1)` does not means bit n is the
    // first difference; the bit of `first` is 1 when masking to n+1 bits keeps more of it
    // than masking to n bits.
    //
    // Written for the API server's cost estimate, which must stay under its budget for
    // MAX_ADDRESSES entries: the ends are bound once (`[x].all(f, ...)`), the "/n" suffixes
    // come from a literal list (the estimate cannot bound `string(n)`), and IPs are compared
    // with `==` (it has no bound for `!=` on IPs).
    let suffixes = (0..=128)
        .map(|n| format!("'/{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    let net = |len: &str| format!("cidr(f + [{suffixes}][{len}])");
    let order = format!(
        "!{range} || [{FIRST}].all(f, [{LAST}].all(l, ip(f).family() != ip(l).family() || \
         !lists.range(128).exists(n, n < (ip(f).family() == 4 ? 32 : 128) && \
         {a}.containsIP(l) && !{b}.containsIP(l) && \
         !({b}.masked().ip() == {a}.masked().ip()))))",
        a = net("n"),
        b = net("n + 1"),
    );
    vec![
        (
            shape,
            "'\"' + self + '\" is not a CIDR (10.0.0.0/24), a single IP (10.0.0.7) or a \
             first-last range (10.0.0.10-10.0.0.20)'"
                .to_string(),
        ),
        (
            masked,
            "'CIDR ' + self + ' has host bits set: write the network address of its prefix'"
                .to_string(),
        ),
        (
            family,
            "'range ' + self + ' mixes IPv4 and IPv6'".to_string(),
        ),
        (
            order,
            format!("'range ' + self + ' is reversed: ' + {FIRST} + ' comes after ' + {LAST}"),
        ),
    ]
}

fn rules_json(rules: Vec<(String, String)>) -> serde_json::Value {
    rules
        .into_iter()
        .map(|(rule, message)| json!({"rule": rule, "messageExpression": message}))
        .collect()
}

/// `spec.addresses`: a non-empty set of CIDRs, IPs and ranges.
pub fn addresses(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "CIDRs (10.0.0.0/24), single IPs (10.0.0.7) or inclusive first-last ranges (10.0.0.10-10.0.0.20); IPv4 and IPv6 may be mixed.",
        "minItems": 1,
        "maxItems": MAX_ADDRESSES,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ADDRESS_LEN,
            "x-kubernetes-validations": rules_json(address_rules()),
        }
    })
}

/// `spec.l2.interfaces`: regular expressions (RE2 syntax) for interface names.
pub fn interfaces(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Regular expressions (RE2 syntax) matched against whole interface names.",
        "maxItems": 32,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            // A pattern that does not compile makes `matches` fail on both sides.
            "x-kubernetes-validations": [{
                "rule": "''.matches(self) || !''.matches(self)",
                "messageExpression": "'\"' + self + '\" is not a valid regular expression'"
            }]
        }
    })
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters (alphanumerics at both ends; `-`, `_`, `.` inside), as Kubernetes defines it.
/// Written without backslashes (`[.]`), which CEL string literals would take as escapes.
pub const LABEL_KEY_RE: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or at most 63 characters shaped like a key's name.
pub const LABEL_VALUE_RE: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";
/// Longest key: a 253-character prefix, `/`, a 63-character name.
const MAX_LABEL_KEY_LEN: u64 = 253 + 1 + 63;
/// Bounds that keep the CEL cost estimate of a selector small.
const MAX_SELECTOR_LABELS: u64 = 64;
const MAX_SELECTOR_EXPRESSIONS: u64 = 32;
const MAX_SELECTOR_VALUES: u64 = 64;

/// Help texts go inside single-quoted CEL strings: no quotes in them.
const KEY_HELP: &str = "an optional DNS subdomain prefix and a slash, then at most 63 letters, digits, dashes, underscores or dots, beginning and ending with a letter or digit";
const VALUE_HELP: &str = "empty, or at most 63 letters, digits, dashes, underscores or dots, beginning and ending with a letter or digit";

/// CEL: the label key in `var` has the shape of [`LABEL_KEY_RE`].
fn key_shape(var: &str) -> String {
    format!("{var}.matches('{LABEL_KEY_RE}')")
}

/// CEL: the label key in `var` has no prefix, or one of at most 253 characters.
fn key_prefix_fits(var: &str) -> String {
    format!("(!{var}.contains('/') || {var}.indexOf('/') <= 253)")
}

/// The CEL rules for a label key held in `self`, as `(rule, messageExpression)` pairs (its
/// length is the schema's `maxLength`).
fn label_key_rules() -> Vec<(String, String)> {
    vec![
        (
            key_shape("self"),
            format!("'\"' + self + '\" is not a valid label key: {KEY_HELP}'"),
        ),
        (
            key_prefix_fits("self"),
            "'\"' + self + '\" is not a valid label key: its prefix is longer than 253 characters'"
                .to_string(),
        ),
    ]
}

fn label_value_schema() -> serde_json::Value {
    json!({
        "type": "string",
        "maxLength": 63,
        "x-kubernetes-validations": [{
            "rule": format!("self.matches('{LABEL_VALUE_RE}')"),
            "messageExpression": format!("'\"' + self + '\" is not a valid label value: {VALUE_HELP}'"),
        }],
    })
}

/// An optional label selector (`matchLabels`, `matchExpressions`) whose keys, values and operators
/// the API server checks, so a selector that could never match as meant is refused on
/// apply, naming the field, instead of silently selecting nothing.
pub fn label_selector(_: &mut SchemaGenerator) -> Schema {
    // matchLabels' keys have no schema of their own: one rule on the map checks them all
    // (shape, length, prefix) and names the first bad one.
    let map_key_ok = format!(
        "{} && k.size() <= {MAX_LABEL_KEY_LEN} && {}",
        key_shape("k"),
        key_prefix_fits("k")
    );
    json_schema!({
        "type": "object",
        "nullable": true,
        "description": "A label selector: every matchLabels pair and every matchExpressions requirement must hold; empty selects everything.",
        "properties": {
            "matchLabels": {
                "type": "object",
                "description": "Labels that must be present with exactly these values.",
                "maxProperties": MAX_SELECTOR_LABELS,
                "additionalProperties": label_value_schema(),
                "x-kubernetes-validations": [
                    {
                        "rule": format!("self.all(k, {map_key_ok})"),
                        "messageExpression": format!("'\"' + self.filter(k, !({map_key_ok}))[0] + '\" is not a valid label key: {KEY_HELP}'"),
                    }
                ],
            },
            "matchExpressions": {
                "type": "array",
                "description": "Requirements on labels: key, operator (In, NotIn, Exists, DoesNotExist) and values (at least one for In and NotIn, none for Exists and DoesNotExist).",
                "maxItems": MAX_SELECTOR_EXPRESSIONS,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_LABEL_KEY_LEN,
                            "x-kubernetes-validations": rules_json(label_key_rules()),
                        },
                        "operator": {
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                        },
                        "values": {
                            "type": "array",
                            "maxItems": MAX_SELECTOR_VALUES,
                            "items": label_value_schema(),
                        },
                    },
                    "x-kubernetes-validations": [
                        {
                            "rule": "!(self.operator == 'In' || self.operator == 'NotIn') || (has(self.values) && size(self.values) > 0)",
                            "messageExpression": "'operator ' + self.operator + ' on key \"' + self.key + '\" needs at least one value'",
                            "fieldPath": ".values",
                            "reason": "FieldValueRequired",
                        },
                        {
                            "rule": "!(self.operator == 'Exists' || self.operator == 'DoesNotExist') || !has(self.values) || size(self.values) == 0",
                            "messageExpression": "'operator ' + self.operator + ' on key \"' + self.key + '\" takes no values'",
                            "fieldPath": ".values",
                        },
                    ],
                },
            },
        },
    })
}

/// Conditions keyed by `type`, so the controller's apply merges them.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let item = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition::json_schema(generator);
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item,
    })
}

/// A non-negative integer written in decimal.
pub fn decimal(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": "^(0|[1-9][0-9]*)$",
        "maxLength": 40,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The help texts and patterns are spliced into single-quoted CEL strings, where a
    /// quote would end the string and a backslash start an escape (the API server refuses
    /// the CRD then: seen once, the reason these are checked here).
    #[test]
    fn label_texts_fit_inside_cel_string_literals() {
        for text in [KEY_HELP, VALUE_HELP, LABEL_KEY_RE, LABEL_VALUE_RE] {
            assert!(!text.contains('\'') && !text.contains('\\'), "{text}");
        }
    }
}
