#!/usr/bin/env bash
# `make lab`'s demo: two echo pods, a LoadBalancer Service, and traffic from the client
# namespace to its NodePort and to its LoadBalancer IP (announced by a speaker). Assumes
# `ferrolb-lab up` has run; exits 1 when the LoadBalancer IP does not answer.
set -euo pipefail
lab=${LAB:-target/debug/ferrolb-lab}
eval "$($lab env | grep '^export')"
kubectl=$(bash "$(dirname "$0")/build-kube.sh" --print-dir)/kubectl
logs=${FERROLB_LAB_DIR:-/run/ferrolb-lab}/logs

$kubectl apply -f - <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-1, namespace: demo, labels: {app: echo}}
spec:
  nodeName: node1
  containers: [{name: echo, image: ferrolb.io/lab-echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo-2, namespace: demo, labels: {app: echo}}
spec:
  nodeName: node2
  containers: [{name: echo, image: ferrolb.io/lab-echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
YAML
$kubectl -n demo wait --for=condition=Ready pod/echo-1 pod/echo-2 --timeout=60s
for _ in $(seq 1 100); do
  ip=$($kubectl -n demo get svc echo -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
  [ -n "$ip" ] && break
  sleep 0.2
done
port=$($kubectl -n demo get svc echo -o jsonpath='{.spec.ports[0].nodePort}')
echo "Service demo/echo got LoadBalancer IP ${ip:-<none>} (NodePort $port)"
if [ -z "$ip" ]; then
  echo "lab-demo: the controller gave demo/echo no LoadBalancer IP within 20 s; see $logs/ferrolb-controller.log" >&2
  exit 1
fi
$kubectl -n demo get svc echo -o jsonpath='{.status.conditions[?(@.type=="ferrolb.io/IPAllocated")].message}{"\n"}'
node1=$($lab env | sed -n 's/^# node1: \([0-9.]*\).*/\1/p')
echo "curl from the client namespace to node1's NodePort:"
# kube-proxy programs the Service a moment after its EndpointSlice appears.
for _ in $(seq 1 50); do
  $lab exec client curl -sS --max-time 2 "http://$node1:$port/" 2>/dev/null && break
  sleep 0.2
done
# The speaker that wins the IP announces it and writes its Announced condition.
announced=
for _ in $(seq 1 50); do
  announced=$($kubectl -n demo get svc echo -o jsonpath='{.status.conditions[?(@.type=="ferrolb.io/Announced")].message}')
  [ -n "$announced" ] && break
  sleep 0.2
done
echo "ferrolb.io/Announced: ${announced:-<not yet>}"
url_ip=$ip
if [[ $ip == *:* ]]; then url_ip="[$ip]"; fi
echo "curl from the client namespace to the LoadBalancer IP $ip:"
# The client resolves the IP with ARP/NDP, answered by the announcing speaker; allow a
# moment after the IP appears.
end=$((SECONDS + 10))
while [ "$SECONDS" -lt "$end" ]; do
  if $lab exec client curl -sS -g --max-time 2 "http://$url_ip/" 2>/dev/null; then
    exit 0
  fi
  sleep 0.5
done
echo "lab-demo: no answer from the LoadBalancer IP $ip within 10 s: no speaker announces it" >&2
echo "  (see \`$lab status\` and the speakers' logs, $logs/ferrolb-speaker-*.log)" >&2
exit 1
