//! The Helm chart `deploy/charts/ferrolb`, rendered by the pinned helm (no cluster needed):
//! with default values it installs exactly what `deploy/` installs, and each value a user
//! sets lands where it must. (`cp_chart.rs` installs it on a real API server.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::Path;

use ferrolb_e2e::helm;
use serde_yaml::Value;

const RELEASE: &str = "ferrolb";
const NAMESPACE: &str = "ferrolb-system";

/// The labels and annotations Helm adds that `deploy/` does not carry.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];
const HELM_ANNOTATIONS: [&str; 1] = ["helm.sh/resource-policy"];

fn render(sets: &[&str]) -> Vec<Value> {
    render_as(RELEASE, NAMESPACE, sets)
}

fn render_as(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let text = helm::template(release, namespace, sets).unwrap_or_else(|e| panic!("{e}"));
    helm::documents(&text).unwrap()
}

/// What helm says when it refuses these values.
fn refused(sets: &[&str]) -> String {
    match helm::template(RELEASE, NAMESPACE, sets) {
        Ok(out) => panic!("helm accepted {sets:?}:\n{out}"),
        Err(e) => e.to_string(),
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn key(v: &Value) -> String {
    let m = &v["metadata"];
    match m["namespace"].as_str() {
        Some(ns) => format!("{} {ns}/{}", str_of(&v["kind"]), str_of(&m["name"])),
        None => format!("{} {}", str_of(&v["kind"]), str_of(&m["name"])),
    }
}

fn by_key(objs: Vec<Value>) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for o in objs {
        let k = key(&o);
        assert!(map.insert(k.clone(), o).is_none(), "{k} twice");
    }
    map
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let all: Vec<String> = objs.iter().map(key).collect();
            panic!("no {kind} {name} among {all:?}")
        })
}

fn has(objs: &[Value], kind: &str, name: &str) -> bool {
    objs.iter()
        .any(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn pod_spec<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    &find(objs, kind, name)["spec"]["template"]["spec"]
}

fn args(objs: &[Value], kind: &str, name: &str) -> Vec<String> {
    pod_spec(objs, kind, name)["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| str_of(a).to_string())
        .collect()
}

fn controller_args(objs: &[Value]) -> Vec<String> {
    args(objs, "Deployment", "ferrolb-controller")
}

fn speaker_args(objs: &[Value]) -> Vec<String> {
    args(objs, "DaemonSet", "ferrolb-speaker")
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

/// Removes what Helm adds on its own (and maps left empty) so that a chart object compares
/// with the same object of `deploy/`.
fn without_helm(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("metadata") {
        strip_meta(meta);
    }
    if let Some(meta) = v
        .get_mut("spec")
        .and_then(|s| s.get_mut("template"))
        .and_then(|t| t.get_mut("metadata"))
    {
        strip_meta(meta);
    }
    v
}

// `get_mut`, not `meta["labels"]`: indexing a mapping mutably inserts a null when the key is
// missing, which would itself show as a difference.
fn strip_meta(meta: &mut Value) {
    let Some(meta) = meta.as_mapping_mut() else {
        return;
    };
    for (field, drop) in [
        ("labels", &HELM_LABELS[..]),
        ("annotations", &HELM_ANNOTATIONS[..]),
    ] {
        let Some(map) = meta.get_mut(field).and_then(Value::as_mapping_mut) else {
            continue;
        };
        for k in drop {
            map.remove(*k);
        }
        if map.is_empty() {
            meta.remove(field);
        }
    }
}

/// Every path where `a` (the chart) and `b` (deploy/) differ, with both values.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Mapping(ma), Value::Mapping(mb)) => {
            let mut keys: Vec<&Value> = ma.keys().chain(mb.keys()).collect();
            keys.sort_by_key(|k| serde_yaml::to_string(k).unwrap_or_default());
            keys.dedup();
            for k in keys {
                let name = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                let (va, vb) = (ma.get(k), mb.get(k));
                match (va, vb) {
                    (Some(va), Some(vb)) => differences(&format!("{path}.{name}"), va, vb, out),
                    (Some(va), None) => out.push(format!(
                        "  {path}.{name}: only in the chart: {}",
                        one_line(va)
                    )),
                    (None, Some(vb)) => out.push(format!(
                        "  {path}.{name}: only in deploy/: {}",
                        one_line(vb)
                    )),
                    (None, None) => {}
                }
            }
        }
        (Value::Sequence(sa), Value::Sequence(sb)) if sa.len() == sb.len() => {
            for (i, (va, vb)) in sa.iter().zip(sb).enumerate() {
                differences(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!(
            "  {path}: chart {} / deploy/ {}",
            one_line(a),
            one_line(b)
        )),
    }
}

fn one_line(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// deploy/ as `kubectl kustomize` builds it.
fn kustomized_deploy() -> Vec<Value> {
    let kubectl = ferrolb_e2e::bins::binary("kubectl").unwrap_or_else(|e| panic!("{e}"));
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(&deploy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    helm::documents(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

#[test]
fn default_values_install_what_deploy_installs() {
    let chart = by_key(render(&[]).into_iter().map(without_helm).collect());
    // Helm leaves the release namespace to `--create-namespace`; deploy/ creates it, with the
    // Pod Security labels the speaker needs (the chart's NOTES tell how to set them).
    let base = by_key(
        kustomized_deploy()
            .into_iter()
            .filter(|o| o["kind"] != "Namespace")
            .collect(),
    );
    let mut report = Vec::new();
    for k in chart.keys().filter(|k| !base.contains_key(*k)) {
        report.push(format!("{k}: only in the chart"));
    }
    for k in base.keys().filter(|k| !chart.contains_key(*k)) {
        report.push(format!("{k}: only in deploy/"));
    }
    for (k, c) in &chart {
        if let Some(b) = base.get(k) {
            let mut diffs = Vec::new();
            differences("", c, b, &mut diffs);
            if !diffs.is_empty() {
                report.push(format!("{k}:\n{}", diffs.join("\n")));
            }
        }
    }
    assert!(
        report.is_empty(),
        "the chart with default values and deploy/ install different objects (fix one of them):\n{}",
        report.join("\n")
    );
    // The comparison compared something: every kind a user relies on is there.
    for k in [
        "CustomResourceDefinition ippools.ferrolb.io",
        "Deployment ferrolb-system/ferrolb-controller",
        "PodDisruptionBudget ferrolb-system/ferrolb-controller",
        "Service ferrolb-system/ferrolb-controller-metrics",
        "DaemonSet ferrolb-system/ferrolb-speaker",
        "Service ferrolb-system/ferrolb-speaker-metrics",
        "ClusterRole ferrolb-controller",
        "Role ferrolb-system/ferrolb-speaker-gossip-secret",
    ] {
        assert!(chart.contains_key(k), "{k} missing: {:?}", chart.keys());
    }
}

#[test]
fn defaults_are_what_the_docs_promise() {
    let objs = render(&[]);
    let deploy = find(&objs, "Deployment", "ferrolb-controller");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let c = controller_args(&objs);
    let s = speaker_args(&objs);
    for a in ["--log-format=json", "--default-class=true"] {
        assert!(c.contains(&a.to_string()), "{c:?}");
        assert!(s.contains(&a.to_string()), "{s:?}");
    }
    assert!(
        c.contains(&"--lease-name=ferrolb-controller".to_string()),
        "{c:?}"
    );
    // The controller creates the gossip Secret; the speakers read that one.
    assert!(
        c.contains(&"--gossip-secret=ferrolb-gossip".to_string()),
        "{c:?}"
    );
    assert!(
        s.contains(&"--gossip-secret=ferrolb-gossip".to_string()),
        "{s:?}"
    );
    assert!(!has(&objs, "Secret", "ferrolb-gossip"));
    // The binaries' own admin address (dual-stack) unless a value asks for another.
    assert!(!c.iter().chain(&s).any(|a| a.starts_with("--admin-address")));
    assert!(!objs.iter().any(|o| o["kind"] == "ServiceMonitor"));
    let crd = find(&objs, "CustomResourceDefinition", "ippools.ferrolb.io");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let sp = pod_spec(&objs, "DaemonSet", "ferrolb-speaker");
    assert_eq!(sp["hostNetwork"], true);
    assert_eq!(
        sp["containers"][0]["securityContext"]["capabilities"],
        yaml("{add: [NET_RAW, NET_ADMIN], drop: [ALL]}")
    );
    assert_eq!(sp["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod_spec(&objs, "Deployment", "ferrolb-controller")["priorityClassName"],
        "system-cluster-critical"
    );
    let pdb = find(&objs, "PodDisruptionBudget", "ferrolb-controller");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    for (svc, port) in [
        ("ferrolb-controller-metrics", 7472),
        ("ferrolb-speaker-metrics", 7473),
    ] {
        let ports = &find(&objs, "Service", svc)["spec"]["ports"][0];
        assert_eq!(ports["port"], port, "{svc}");
        assert_eq!(ports["name"], "metrics", "{svc}");
    }
}

#[test]
fn the_service_monitor_appears_only_when_enabled() {
    let objs = render(&[
        "serviceMonitor.enabled=true",
        "serviceMonitor.labels.release=prom",
        "serviceMonitor.interval=15s",
    ]);
    for name in ["ferrolb-controller", "ferrolb-speaker"] {
        let sm = find(&objs, "ServiceMonitor", name);
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(sm["metadata"]["labels"]["release"], "prom");
        assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
        assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
        // It selects the component's metrics Service and nothing else of ferrolb's.
        let selector = &sm["spec"]["selector"]["matchLabels"];
        let svc = find(&objs, "Service", &format!("{name}-metrics"));
        for (k, v) in selector.as_mapping().unwrap() {
            assert_eq!(&svc["metadata"]["labels"][k], v);
        }
        let selected: Vec<String> = objs
            .iter()
            .filter(|o| o["kind"] == "Service")
            .filter(|o| {
                selector
                    .as_mapping()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| &o["metadata"]["labels"][k] == v)
            })
            .map(key)
            .collect();
        assert_eq!(selected.len(), 1, "{selected:?}");
    }
    assert!(
        !render(&["serviceMonitor.enabled=false"])
            .iter()
            .any(|o| o["kind"] == "ServiceMonitor")
    );
}

#[test]
fn image_values_land_in_the_pods() {
    let objs = render(&[
        "image.registry=registry.example:5000/lb",
        "controller.image.tag=1.2.3",
        "speaker.image.repository=speaker-debug",
        "image.pullPolicy=Never",
        "image.pullSecrets={regcred}",
    ]);
    let c = pod_spec(&objs, "Deployment", "ferrolb-controller");
    let s = pod_spec(&objs, "DaemonSet", "ferrolb-speaker");
    assert_eq!(
        c["containers"][0]["image"],
        "registry.example:5000/lb/ferrolb-controller:1.2.3"
    );
    // The speaker's tag defaults to the chart's appVersion, the crate version.
    assert_eq!(
        s["containers"][0]["image"],
        format!(
            "registry.example:5000/lb/speaker-debug:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    for p in [c, s] {
        assert_eq!(p["containers"][0]["imagePullPolicy"], "Never");
        assert_eq!(p["imagePullSecrets"], yaml("[{name: regcred}]"));
    }

    // Full names (as `make images` prints them) with an empty registry, and a digest.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let objs = render(&[
        "image.registry=",
        "controller.image.repository=ghcr.io/ferrolb/ferrolb-controller",
        &format!("speaker.image.digest={digest}"),
        "speaker.image.repository=ghcr.io/ferrolb/ferrolb-speaker",
    ]);
    assert_eq!(
        pod_spec(&objs, "Deployment", "ferrolb-controller")["containers"][0]["image"],
        format!(
            "ghcr.io/ferrolb/ferrolb-controller:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(
        pod_spec(&objs, "DaemonSet", "ferrolb-speaker")["containers"][0]["image"],
        format!("ghcr.io/ferrolb/ferrolb-speaker@{digest}")
    );
}

#[test]
fn default_class_and_log_format_reach_both_binaries() {
    let objs = render(&["defaultClass=false", "logFormat=text"]);
    for a in [controller_args(&objs), speaker_args(&objs)] {
        assert!(a.contains(&"--default-class=false".to_string()), "{a:?}");
        assert!(a.contains(&"--log-format=text".to_string()), "{a:?}");
        assert!(!a.contains(&"--default-class=true".to_string()), "{a:?}");
    }
}

fn secret_names_granted(objs: &[Value], role: &str) -> Option<Vec<String>> {
    let role = objs
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["name"] == role)?;
    Some(
        role["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|r| r["resources"] == yaml("[secrets]"))
            .flat_map(|r| {
                r["resourceNames"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|n| str_of(&n).to_string())
            .collect(),
    )
}

#[test]
fn a_given_gossip_key_makes_the_chart_create_the_secret() {
    let key = "0123456789abcdef0123456789abcdef";
    let objs = render(&[&format!("gossip.key={key}")]);
    let secret = find(&objs, "Secret", "ferrolb-gossip");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    assert_eq!(secret["data"]["key"], b64.as_str());
    assert_eq!(secret["metadata"]["namespace"], NAMESPACE);
    // The speakers read it; the controller leaves Secrets alone and may not touch them.
    assert!(speaker_args(&objs).contains(&"--gossip-secret=ferrolb-gossip".to_string()));
    assert_eq!(
        secret_names_granted(&objs, "ferrolb-speaker-gossip-secret"),
        Some(vec!["ferrolb-gossip".to_string()])
    );
    assert!(controller_args(&objs).contains(&"--gossip-secret=".to_string()));
    assert!(!has(&objs, "Role", "ferrolb-controller-gossip-secret"));
    assert!(!has(
        &objs,
        "RoleBinding",
        "ferrolb-controller-gossip-secret"
    ));
}

#[test]
fn an_existing_gossip_secret_is_the_one_both_components_are_pointed_at() {
    let objs = render(&["gossip.existingSecret=my-gossip"]);
    assert!(!objs.iter().any(|o| o["kind"] == "Secret"));
    assert!(speaker_args(&objs).contains(&"--gossip-secret=my-gossip".to_string()));
    assert_eq!(
        secret_names_granted(&objs, "ferrolb-speaker-gossip-secret"),
        Some(vec!["my-gossip".to_string()])
    );
    // The controller must not create a Secret of that name before the user's arrives (a
    // random key would then win): it is told to manage none, and gets no Secret RBAC.
    let c = controller_args(&objs);
    assert!(c.contains(&"--gossip-secret=".to_string()), "{c:?}");
    assert!(!c.iter().any(|a| a.contains("my-gossip")), "{c:?}");
    assert!(!has(&objs, "Role", "ferrolb-controller-gossip-secret"));
}

#[test]
fn scheduling_values_land_in_each_component() {
    let objs = render(&[
        "controller.resources.requests.cpu=200m",
        "controller.resources.limits.memory=1Gi",
        "controller.nodeSelector.role=infra",
        "controller.tolerations[0].key=infra",
        "controller.tolerations[0].operator=Exists",
        "controller.priorityClassName=ferrolb-high",
        "controller.replicas=3",
        "speaker.resources.limits.memory=300Mi",
        "speaker.nodeSelector.lb=yes",
        "speaker.tolerations[0].operator=Exists",
        "speaker.priorityClassName=",
        "speaker.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=lb",
        "speaker.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "controller.extraArgs={--renew-deadline=8}",
        "speaker.extraArgs={--interface-scan-period=30}",
    ]);
    let c = pod_spec(&objs, "Deployment", "ferrolb-controller");
    assert_eq!(c["containers"][0]["resources"]["requests"]["cpu"], "200m");
    assert_eq!(c["containers"][0]["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(c["nodeSelector"]["role"], "infra");
    // A map value merges with the default (kubernetes.io/os).
    assert_eq!(c["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(c["tolerations"], yaml("[{key: infra, operator: Exists}]"));
    assert_eq!(c["priorityClassName"], "ferrolb-high");
    assert!(c["affinity"]["podAntiAffinity"].is_mapping());
    assert_eq!(
        find(&objs, "Deployment", "ferrolb-controller")["spec"]["replicas"],
        3
    );
    assert!(controller_args(&objs).contains(&"--renew-deadline=8".to_string()));

    let s = pod_spec(&objs, "DaemonSet", "ferrolb-speaker");
    assert_eq!(s["containers"][0]["resources"]["limits"]["memory"], "300Mi");
    assert_eq!(s["nodeSelector"]["lb"], "yes");
    // A list replaces the default: every taint tolerated, as asked.
    assert_eq!(s["tolerations"], yaml("[{operator: Exists}]"));
    assert!(s.get("priorityClassName").is_none(), "{s:?}");
    assert_eq!(
        s["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "lb"
    );
    assert!(speaker_args(&objs).contains(&"--interface-scan-period=30".to_string()));
}

#[test]
fn an_admin_address_value_moves_flag_ports_and_services_together() {
    let objs = render(&[
        "controller.adminAddress=0.0.0.0:9472",
        "speaker.adminAddress=[::]:9473",
    ]);
    assert!(controller_args(&objs).contains(&"--admin-address=0.0.0.0:9472".to_string()));
    assert!(speaker_args(&objs).contains(&"--admin-address=[::]:9473".to_string()));
    for (kind, name, port) in [
        ("Deployment", "ferrolb-controller", 9472),
        ("DaemonSet", "ferrolb-speaker", 9473),
    ] {
        let p = pod_spec(&objs, kind, name);
        assert_eq!(p["containers"][0]["ports"][0]["name"], "admin");
        assert_eq!(p["containers"][0]["ports"][0]["containerPort"], port);
        let svc = find(&objs, "Service", &format!("{name}-metrics"));
        assert_eq!(svc["spec"]["ports"][0]["port"], port);
    }
}

#[test]
fn the_speaker_is_probed_on_loopback_unless_it_listens_on_one_address() {
    let host = |objs: &[Value], probe: &str| -> String {
        str_of(&pod_spec(objs, "DaemonSet", "ferrolb-speaker")["containers"][0][probe]["httpGet"]["host"])
            .to_string()
    };
    for sets in [
        &[][..],
        &["speaker.adminAddress=[::]:9473"][..],
        &["speaker.adminAddress=0.0.0.0:9473"][..],
    ] {
        let objs = render(sets);
        assert_eq!(host(&objs, "livenessProbe"), "127.0.0.1", "{sets:?}");
        assert_eq!(host(&objs, "readinessProbe"), "127.0.0.1", "{sets:?}");
    }
    let objs = render(&["speaker.adminAddress=[fd00::5]:9473"]);
    assert_eq!(host(&objs, "livenessProbe"), "fd00::5");
    let objs = render(&["speaker.adminAddress=10.0.0.5:9473"]);
    assert_eq!(host(&objs, "readinessProbe"), "10.0.0.5");
}

#[test]
fn crd_values_leave_it_out_or_let_uninstall_remove_it() {
    assert!(
        !render(&["crds.install=false"])
            .iter()
            .any(|o| o["kind"] == "CustomResourceDefinition")
    );
    let objs = render(&["crds.keep=false"]);
    let crd = find(&objs, "CustomResourceDefinition", "ippools.ferrolb.io");
    assert!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null(),
        "{:?}",
        crd["metadata"]
    );
    // The CRD itself is the generated one.
    let generated = ferrolb_crds::crd_files().unwrap();
    let committed: Value = serde_yaml::from_str(&generated[0].1).unwrap();
    assert_eq!(crd["spec"], committed["spec"]);
}

#[test]
fn another_release_name_and_namespace_flow_into_every_name() {
    let objs = render_as("edge", "lb", &[]);
    let c = args(&objs, "Deployment", "edge-ferrolb-controller");
    assert!(
        c.contains(&"--lease-name=edge-ferrolb-controller".to_string()),
        "{c:?}"
    );
    assert!(
        c.contains(&"--gossip-secret=edge-ferrolb-gossip".to_string()),
        "{c:?}"
    );
    for o in &objs {
        let name = str_of(&o["metadata"]["name"]);
        if o["kind"] != "CustomResourceDefinition" {
            assert!(name.starts_with("edge-ferrolb-"), "{}", key(o));
        }
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            assert_eq!(ns, "lb", "{}", key(o));
        }
        for s in o["subjects"].as_sequence().into_iter().flatten() {
            assert_eq!(s["namespace"], "lb", "{}", key(o));
        }
    }
    assert_eq!(
        secret_names_granted(&objs, "edge-ferrolb-speaker-gossip-secret"),
        Some(vec!["edge-ferrolb-gossip".to_string()])
    );
}

#[test]
fn bad_values_are_refused_before_anything_is_installed() {
    for (sets, says) in [
        (vec!["logFormat=yaml"], "logFormat"),
        (vec!["controller.replicas=0"], "replicas"),
        (vec!["controler.replicas=3"], "controler"),
        (vec!["image.pullPolicy=Sometimes"], "pullPolicy"),
        (vec!["gossip.key=short"], "key"),
        (vec!["controller.adminAddress=localhost"], "adminAddress"),
        (vec!["speaker.tolerations[0].effect=NoSchedul"], "effect"),
        (vec!["controller.extraArgs={renew-deadline=8}"], "extraArgs"),
        (vec!["serviceMonitor.interval=often"], "interval"),
        (
            vec![
                "gossip.existingSecret=mine",
                "gossip.key=0123456789abcdef0123",
            ],
            "not both",
        ),
    ] {
        let err = refused(&sets);
        assert!(err.contains(says), "{sets:?}: {err}");
    }
}

#[test]
fn helm_lint_passes_strictly() {
    let chart = helm::chart_dir().display().to_string();
    for sets in [
        vec![],
        vec!["--set", "serviceMonitor.enabled=true"],
        vec!["--set", "gossip.key=0123456789abcdef0123"],
    ] {
        let mut a = vec!["lint", "--strict", chart.as_str()];
        a.extend(sets);
        helm::helm(&a).unwrap_or_else(|e| panic!("{e}"));
    }
}
