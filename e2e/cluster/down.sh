#!/usr/bin/env bash
# Tears the mini-cluster down: no daemons, namespaces, bridges or mounts are left. Idempotent.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

[ "$(id -u)" = 0 ] || mc_die "run as root"

# kill_and_wait PID...: SIGTERM, then SIGKILL what is left after 10 s.
kill_and_wait() {
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null
    local deadline=$((SECONDS + 10)) p left
    while :; do
        left=
        for p in "$@"; do
            [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null && left="$left $p"
        done
        [ -z "$left" ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            kill -KILL $left 2>/dev/null
            return 0
        fi
        sleep 0.2
    done
}

# Cancel jobs while the controller still runs, so that nothing is requeued later.
if command -v scancel >/dev/null && [ -f "$MC_CONF_DIR/slurm.conf" ] && mc_alive "$MC_STATE/slurmctld.pid"; then
    scancel --full --quiet --cluster="$MC_CLUSTER" --user=root 2>/dev/null || scancel --quiet --user=root 2>/dev/null || true
fi

# Everything that runs in a node's namespace belongs to the cluster: job steps, Ray, slurmd.
for nsfile in /run/netns/llmnode*; do
    [ -e "$nsfile" ] || continue
    ns=$(basename "$nsfile")
    kill_and_wait $(ip netns pids "$ns" 2>/dev/null)
    ip netns del "$ns" 2>/dev/null || true
done
for f in "$MC_STATE"/slurmd-*.pid "$MC_STATE/slurmctld.pid"; do
    [ -s "$f" ] && mc_alive "$f" && kill_and_wait "$(cat "$f")"
    rm -f "$f"
done
if [ -s "$MC_STATE/munged.pid" ]; then
    mc_alive "$MC_STATE/munged.pid" && kill_and_wait "$(cat "$MC_STATE/munged.pid")"
    rm -f "$MC_STATE/munged.pid"
fi

for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep '^veth-llmnode' | cut -d@ -f1); do
    ip link del "$link" 2>/dev/null || true
done
ip link del "$MC_BRIDGE" 2>/dev/null || true

if grep -q "$MC_HOSTS_TAG" /etc/hosts; then
    hosts_tmp=$(mktemp)
    grep -v "$MC_HOSTS_TAG" /etc/hosts >"$hosts_tmp"
    cat "$hosts_tmp" >/etc/hosts
    rm -f "$hosts_tmp"
fi
mc_log "down"
