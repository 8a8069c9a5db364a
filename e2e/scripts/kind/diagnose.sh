#!/usr/bin/env bash
# What the kind cluster looks like, for a failed test run's log: nodes, every pod, the
# events of ferrolb's namespace, and the last lines of each ferrolb pod's log (the
# previous container's too, when it restarted). Read-only; prints to stdout.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

[ -f "$kind_dir/kubeconfig" ] || { say "no kind cluster (no $kind_dir/kubeconfig)"; exit 0; }
ns=ferrolb-system
echo "=== nodes"; kc get nodes -o wide
echo "=== pods"; kc get pods -A -o wide
echo "=== events in $ns"; kc -n "$ns" get events --sort-by=.lastTimestamp | tail -40
for pod in $(kc -n "$ns" get pods -o name); do
  echo "=== $pod (last 40 lines)"
  kc -n "$ns" logs "$pod" --all-containers --tail=40 2>&1
  if kc -n "$ns" get "$pod" -o jsonpath='{.status.containerStatuses[*].restartCount}' | grep -qv '^0*$'; then
    echo "--- $pod, previous container"
    kc -n "$ns" logs "$pod" --all-containers --previous --tail=40 2>&1
  fi
done
