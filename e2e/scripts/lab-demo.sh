#!/usr/bin/env bash
# `make lab`'s demo: two echo pods, a LoadBalancer Service, and traffic from the client
# namespace. Assumes `ferrolb-lab up` has run.
set -euo pipefail
lab=${LAB:-target/debug/ferrolb-lab}
eval "$($lab env | grep '^export')"
kubectl=$(bash "$(dirname "$0")/build-kube.sh" --print-dir)/kubectl

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
$kubectl -n demo get svc echo -o jsonpath='{.status.conditions[0].message}{"\n"}'
node1=$($lab env | sed -n 's/^# node1: \([0-9.]*\).*/\1/p')
echo "curl from the client namespace to node1's NodePort:"
# kube-proxy programs the Service a moment after its EndpointSlice appears.
for _ in $(seq 1 50); do
  $lab exec client curl -sS --max-time 2 "http://$node1:$port/" 2>/dev/null && break
  sleep 0.2
done
echo "curl from the client namespace to the LoadBalancer IP $ip:"
if ! $lab exec client curl -sS --max-time 3 "http://$ip/"; then
  echo "(no answer yet: announcing LoadBalancer IPs over ARP/NDP is the speaker's job, which the lab does not run yet)"
fi
