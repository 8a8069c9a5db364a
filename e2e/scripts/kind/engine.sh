#!/usr/bin/env bash
# The container engine that `make images` and `make kind` use.
#
#   engine.sh start    make sure a Docker engine answers; start one of our own if none does
#   engine.sh stop     stop the engine this script started (never one it found running)
#   engine.sh status   say which engine is in use and who started it
#   engine.sh env      print `export DOCKER_HOST=...` for a shell
#   engine.sh is-ours  exit 0 when the engine in use is one this script started
#
# An engine that already answers on $DOCKER_HOST (or the default socket) is used as it is
# and never stopped. Otherwise Debian's docker.io is installed when missing (its package
# scripts are kept from starting a daemon of their own) and dockerd is started in the
# background with its PID recorded. It is started so that it leaves the host's network
# alone: no iptables or ip6tables rules, no change to IP forwarding, no default bridge.
# The host's firewall rules and forwarding sysctls are recorded before it starts and
# compared (and, where they differ, restored) after it stops.
#
# Restricted hosts: where this process's capability bounding set lacks capabilities that
# Docker grants to privileged containers (kind's nodes are privileged), runc fails with
# "unable to apply caps". The engine is then given a runtime wrapper that removes those
# capabilities from each container's OCI spec before calling the real runc. On a host
# with a full bounding set nothing is wrapped.
set -euo pipefail

state=${FERROLB_DOCKER_STATE:-/run/ferrolb-docker}
data_root=${FERROLB_DOCKER_ROOT:-/var/lib/ferrolb-docker}
sock=unix:///var/run/docker.sock
pidfile=$state/dockerd.pid
log=$state/dockerd.log

say() { echo "ferrolb engine: $*" >&2; }
fail() { say "$*"; exit 1; }

answers() { timeout 10 docker ${1:+-H "$1"} version --format '{{.Server.Version}}' >/dev/null 2>&1; }

ours_running() {
  [ -f "$pidfile" ] || return 1
  local pid start
  read -r pid start < "$pidfile" || return 1
  [ -r "/proc/$pid/stat" ] || return 1
  # The recorded start time guards against a reused PID.
  [ "$(awk '{print $22}' "/proc/$pid/stat")" = "$start" ]
}

# Capability names by number (capability.h), for the bounding-set check.
caps=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP
  LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER
  SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE
  SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP
  MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF
  CHECKPOINT_RESTORE)

# The capabilities of the list above that our bounding set lacks, as CAP_ names.
missing_caps() {
  local bnd i
  bnd=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
  for i in "${!caps[@]}"; do
    (( (bnd >> i) & 1 )) || echo "CAP_${caps[$i]}"
  done
}

write_wrapper() {
  local real=$1 allowed wrapper=$state/runc-wrapper
  allowed=$(comm -23 <(printf 'CAP_%s\n' "${caps[@]}" | sort) <(missing_caps | sort) |
    jq -R . | jq -sc .)
  cat > "$wrapper" <<EOF
#!/bin/sh
# Written by ferrolb's engine.sh: removes from OCI specs the capabilities this host's
# bounding set lacks, then runs the real runc ($real).
allowed='$allowed'
strip() { # FILE FILTER-PATH
  [ -f "\$1" ] || return 0
  tmp="\$1.ferrolb.\$\$"
  jq --argjson ok "\$allowed" "\$2 |= (if . == null then . else with_entries(.value |= map(select(. as \\\$c | \\\$ok | index(\\\$c)))) end)" "\$1" > "\$tmp" && mv "\$tmp" "\$1"
}
cmd=""; bundle=""; process=""; prev=""
for a in "\$@"; do
  case "\$prev" in
    --bundle|-b) bundle=\$a ;;
    --process|-p) process=\$a ;;
  esac
  case "\$a" in
    --bundle=*) bundle=\${a#--bundle=} ;;
    --process=*) process=\${a#--process=} ;;
    create|run|exec) [ -z "\$cmd" ] && cmd=\$a ;;
  esac
  prev=\$a
done
case "\$cmd" in
  create|run) strip "\${bundle:-.}/config.json" .process.capabilities ;;
  exec) [ -n "\$process" ] && strip "\$process" .capabilities ;;
esac
exec "$real" "\$@"
EOF
  chmod 0755 "$wrapper"
  echo "$wrapper"
}

install_docker() {
  command -v dockerd >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && command -v jq >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || fail "no Docker engine answers and dockerd is not installed; run as root (apt-get install docker.io) or start an engine."
  command -v apt-get >/dev/null 2>&1 || fail "no Docker engine answers and there is no apt-get to install docker.io; install and start a Docker engine."
  say "installing Debian's docker.io (dockerd, containerd, runc) and jq"
  # Keep the packages' scripts from starting a daemon with default settings (it would
  # rewrite the host's firewall): policy-rc.d answers "not now".
  local policy=/usr/sbin/policy-rc.d created=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"; created=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local ok=1
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends docker.io jq >/dev/null || ok=""
  [ -n "$created" ] && rm -f "$policy"
  [ -n "$ok" ] || fail "apt-get could not install docker.io; check that Debian's package mirrors are reachable."
}

# The host's firewall and forwarding settings, one file each, under $1: what the engine
# must not change (and what is put back if it did).
firewall_snapshot() {
  local dir=$1
  mkdir -p "$dir"
  local t
  for t in iptables ip6tables; do
    if command -v "$t-save" >/dev/null 2>&1; then
      "$t-save" 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' > "$dir/$t" || true
    fi
  done
  sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding 2>/dev/null | tr -d ' ' > "$dir/sysctl" || true
}

start() {
  if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then
    say "using the engine at DOCKER_HOST=$DOCKER_HOST (not ours; it will not be stopped)"
    return 0
  fi
  if ours_running && answers "$sock"; then
    say "our engine is already running (PID $(cut -d' ' -f1 "$pidfile"))"
    return 0
  fi
  if answers "$sock"; then
    say "using the engine that already answers on $sock (not ours; it will not be stopped)"
    return 0
  fi
  install_docker
  mkdir -p "$state" "$data_root"
  local runtime_args=() missing real
  missing=$(missing_caps | tr '\n' ' ')
  if [ -n "${missing// /}" ]; then
    real=$(command -v runc) || fail "runc is missing"
    runtime_args=(--add-runtime "ferrolb-runc=$(write_wrapper "$real")" --default-runtime ferrolb-runc)
    say "this host's capability bounding set lacks ${missing% }: containers run through a runc wrapper that drops them ($state/runc-wrapper)"
  fi
  rm -rf "$state/host-firewall.before"; firewall_snapshot "$state/host-firewall.before"
  # Own containerd socket directory and exec root: nothing shared with a system engine.
  setsid dockerd \
    --host "$sock" \
    --data-root "$data_root" \
    --exec-root "$state/exec" \
    --pidfile "$state/dockerd.pidfile" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --bridge=none \
    --storage-driver=overlay2 \
    "${runtime_args[@]}" \
    > "$log" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid $(awk '{print $22}' "/proc/$pid/stat")" > "$pidfile"
  local i
  for i in $(seq 1 60); do
    answers "$sock" && break
    kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; rm -f "$pidfile"; fail "dockerd exited; its log is $log"; }
    sleep 0.5
  done
  answers "$sock" || fail "dockerd did not answer within 30 s; its log is $log"
  say "started dockerd (PID $pid, data in $data_root, log $log); it adds no firewall rules and leaves IP forwarding as it was"
}

stop() {
  if ! ours_running; then
    rm -f "$pidfile"
    say "no engine of ours is running"
    return 0
  fi
  local pid
  read -r pid _ < "$pidfile"
  say "stopping our dockerd (PID $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 60); do
    ours_running || break
    sleep 0.5
  done
  if ours_running; then
    say "dockerd did not stop within 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$pidfile"
  # The engine's containerd and shims go with it; what they left mounted under the
  # exec root is unmounted so that nothing of the engine stays behind.
  if [ -d "$state/exec" ]; then
    grep " $state/exec" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  if [ -d "$state/host-firewall.before" ]; then
    local now=$state/host-firewall.after f
    rm -rf "$now"; firewall_snapshot "$now"
    if diff -qr "$state/host-firewall.before" "$now" >/dev/null; then
      say "the host's firewall rules and IP forwarding are as they were before the engine started"
    else
      say "the host's firewall or IP forwarding changed while the engine ran; restoring them:"
      diff -r "$state/host-firewall.before" "$now" >&2 || true
      for f in iptables ip6tables; do
        if [ -s "$state/host-firewall.before/$f" ] && ! cmp -s "$state/host-firewall.before/$f" "$now/$f"; then
          "$f-restore" < "$state/host-firewall.before/$f"
        fi
      done
      if ! cmp -s "$state/host-firewall.before/sysctl" "$now/sysctl"; then
        xargs -r sysctl -qw < "$state/host-firewall.before/sysctl"
      fi
    fi
    rm -rf "$state/host-firewall.before" "$now"
  fi
}

status() {
  if ours_running; then
    say "our dockerd runs (PID $(cut -d' ' -f1 "$pidfile"), data in $data_root)"
  elif answers "$sock"; then
    say "an engine that is not ours answers on $sock"
  else
    say "no engine answers"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export DOCKER_HOST=$sock" ;;
  is-ours)
    # An engine named by DOCKER_HOST is someone else's even while ours runs.
    if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "$sock" ]; then exit 1; fi
    ours_running ;;
  *) echo "usage: $0 start|stop|status|env|is-ours" >&2; exit 2 ;;
esac
