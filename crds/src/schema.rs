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
