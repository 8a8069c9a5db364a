#!/usr/bin/env bash
# ferrolb on the kind cluster (after up.sh made it and wrote the state file): loads the
# three images into the nodes (kind skips a node that has the same image already),
# installs or upgrades ferrolb (Helm chart deploy/charts/ferrolb, or `kubectl apply -k
# deploy/` with the image names patched, FERROLB_KIND_INSTALL=chart|kustomize), waits for
# the controller and the speakers, applies the IPPool `kind` and the demo Service in
# ferrolb-demo, and curls its LoadBalancer IPs from the client container.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ -f "$state_file" ] || fail "no $state_file; run make kind"
st() { jq -r "$1" "$state_file"; }
controller_image=$(st .images.controller)
speaker_image=$(st .images.speaker)
echo_image=$(st .images.echo)
ns=$(st .namespace)
release=$(st .release)
t0=$SECONDS
step() { say "[install $((SECONDS - t0)) s] $*"; }

missing=()
for i in "$controller_image" "$speaker_image" "$echo_image"; do image_exists "$i" || missing+=("$i"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ ! -f "$repo_root/e2e/scripts/images.sh" ]; then
    say "the cluster is up, but ferrolb's images (${missing[*]}) are not built: 'make images' does not exist yet; ferrolb is not installed"
    exit 0
  fi
  fail "images ${missing[*]} are not in the engine; run make images"
fi

# kind loads an image only into the nodes that lack that image ID.
"$(kind_bin)" load docker-image --name "$cluster" "$controller_image" "$speaker_image" "$echo_image" \
  > "$kind_dir/load.log" 2>&1 || { cat "$kind_dir/load.log" >&2; fail "kind load docker-image failed"; }
step "images loaded: $controller_image $speaker_image $echo_image"
# Same names, new content (a rebuild with the same tag): pods that run the old content are
# restarted once everything is applied.
ids=$(docker image inspect -f '{{.Id}}' "$controller_image" "$speaker_image" "$echo_image")
changed=""
if [ -f "$kind_dir/images.loaded" ] && [ "$(cat "$kind_dir/images.loaded")" != "$ids" ]; then changed=1; fi

repo_of() { echo "${1%:*}"; }
tag_of() { echo "${1##*:}"; }

how=${FERROLB_KIND_INSTALL:-}
if [ -z "$how" ]; then
  how=kustomize
  [ -f "$repo_root/deploy/charts/ferrolb/Chart.yaml" ] && [ -f "$repo_root/e2e/scripts/build-helm.sh" ] && how=chart
fi
case "$how" in
  chart)
    helm=$(bash "$repo_root/e2e/scripts/build-helm.sh" --print-path)
    # Full repositories, no registry prefix: the names come from make images as they are.
    "$helm" upgrade --install "$release" "$repo_root/deploy/charts/ferrolb" \
      --kubeconfig "$kind_dir/kubeconfig" --namespace "$ns" --create-namespace \
      --set image.registry= \
      --set "controller.image.repository=$(repo_of "$controller_image")" \
      --set "controller.image.tag=$(tag_of "$controller_image")" \
      --set "speaker.image.repository=$(repo_of "$speaker_image")" \
      --set "speaker.image.tag=$(tag_of "$speaker_image")" \
      --set image.pullPolicy=IfNotPresent >/dev/null || fail "helm upgrade --install failed (above)"
    step "chart deploy/charts/ferrolb installed as release $release in $ns"
    ;;
  kustomize)
    k=$kind_dir/kustomize
    mkdir -p "$k"
    cat > "$k/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $(realpath --relative-to="$k" "$repo_root/deploy")
images:
- name: ghcr.io/ferrolb/ferrolb-controller
  newName: $(repo_of "$controller_image")
  newTag: "$(tag_of "$controller_image")"
- name: ghcr.io/ferrolb/ferrolb-speaker
  newName: $(repo_of "$speaker_image")
  newTag: "$(tag_of "$speaker_image")"
patches:
- target: {kind: Deployment, name: ferrolb-controller}
  patch: |-
    - {op: add, path: /spec/template/spec/containers/0/imagePullPolicy, value: IfNotPresent}
- target: {kind: DaemonSet, name: ferrolb-speaker}
  patch: |-
    - {op: add, path: /spec/template/spec/containers/0/imagePullPolicy, value: IfNotPresent}
EOF
    kc apply --server-side --force-conflicts --field-manager=ferrolb-kind -k "$k" >/dev/null ||
      fail "kubectl apply -k deploy/ failed (above)"
    step "deploy/ applied (kustomize, images patched)"
    ;;
  *) fail "FERROLB_KIND_INSTALL=$how: use chart or kustomize" ;;
esac

# Why a workload is not ready: its pods, their events, the probes' and logs' last words.
explain() {
  local sel=$1
  kc -n "$ns" get pods -l "$sel" -o wide >&2 || true
  local p
  for p in $(kc -n "$ns" get pods -l "$sel" -o name 2>/dev/null); do
    kc -n "$ns" get "$p" -o json | jq -r '.metadata.name as $n | .status.containerStatuses[]? |
      "\($n): ready=\(.ready) restarts=\(.restartCount) state=\(.state | keys[0]) \(.state[] | .reason // "") \(.lastState.terminated.reason // "")"' >&2 || true
    kc -n "$ns" get events --field-selector "involvedObject.name=${p#pod/}" \
      -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' 2>/dev/null | tail -5 >&2 || true
    kc -n "$ns" logs "$p" --tail=15 >&2 2>&1 || true
  done
}
if [ -n "$changed" ]; then
  kc -n "$ns" rollout restart deploy -l app.kubernetes.io/name=ferrolb-controller >/dev/null
  kc -n "$ns" rollout restart ds -l app.kubernetes.io/name=ferrolb-speaker >/dev/null
  kc -n ferrolb-demo rollout restart deploy/echo >/dev/null 2>&1 || true
  step "images changed since the last make kind: restarted the controller, the speakers and the demo"
fi
printf '%s\n' "$ids" > "$kind_dir/images.loaded"
deployment=$(kc -n "$ns" get deploy -l app.kubernetes.io/name=ferrolb-controller -o name | head -1)
daemonset=$(kc -n "$ns" get ds -l app.kubernetes.io/name=ferrolb-speaker -o name | head -1)
[ -n "$deployment" ] && [ -n "$daemonset" ] || fail "no controller Deployment or speaker DaemonSet in $ns"
kc -n "$ns" rollout status "$deployment" --timeout=180s >/dev/null ||
  { explain app.kubernetes.io/name=ferrolb-controller; fail "$deployment did not become ready (above)"; }
kc -n "$ns" rollout status "$daemonset" --timeout=180s >/dev/null ||
  { explain app.kubernetes.io/name=ferrolb-speaker; fail "$daemonset did not become ready (above)"; }
step "$deployment and $daemonset are ready"

# The sample pool: a free range at the top of the kind network's subnets.
jq '{apiVersion: "ferrolb.io/v1alpha1", kind: "IPPool", metadata: {name: "kind"},
     spec: {addresses: .pool}}' "$state_file" |
  kc apply --server-side --field-manager=ferrolb-kind -f - >/dev/null || fail "could not apply the IPPool kind"
step "IPPool kind: $(st '.pool | join(", ")')"

policy=SingleStack
[ "$(st .ip_family)" = dual ] && policy=RequireDualStack
kc apply --server-side --field-manager=ferrolb-kind -f - >/dev/null <<EOF || fail "could not apply the demo Service"
apiVersion: v1
kind: Namespace
metadata: {name: ferrolb-demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: ferrolb-demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: $echo_image
        imagePullPolicy: IfNotPresent
        args: ["--pod", "\$(POD_NAMESPACE)/\$(POD_NAME)", "--node", "\$(NODE_NAME)", "--port", "8080"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        ports:
        - {name: http, containerPort: 8080, protocol: TCP}
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: ferrolb-demo}
spec:
  type: LoadBalancer
  ipFamilyPolicy: $policy
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
EOF
kc -n ferrolb-demo rollout status deploy/echo --timeout=120s >/dev/null ||
  { ns=ferrolb-demo explain app=echo; fail "the demo's echo pods did not become ready (above)"; }

ips=""
for _ in $(seq 1 60); do
  ips=$(kc -n ferrolb-demo get svc echo -o jsonpath='{range .status.loadBalancer.ingress[*]}{.ip}{" "}{end}')
  want=1; [ "$policy" = RequireDualStack ] && want=2
  [ "$(wc -w <<< "$ips")" -ge "$want" ] && break
  sleep 1
done
[ -n "$ips" ] || fail "Service ferrolb-demo/echo got no LoadBalancer IP within 60 s: $(kc -n ferrolb-demo get svc echo -o jsonpath='{.status}')"
step "Service ferrolb-demo/echo has LoadBalancer IPs: $ips"

for ip in $ips; do
  url=http://$ip/; [[ $ip == *:* ]] && url=http://[$ip]/
  answer=""
  for _ in $(seq 1 30); do
    answer=$(docker exec "$client" curl -sS --max-time 3 "$url" 2>/dev/null) && break
    sleep 1
  done
  [ -n "$answer" ] || fail "no answer from $url from $client within 30 s (the speaker's ARP/NDP answer, kube-proxy?)"
  say "curl $url from $client answered:"
  sed 's/^/    /' <<< "$answer" >&2
done
