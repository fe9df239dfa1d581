#!/usr/bin/env bash
# Tears the mini-cluster down: no daemons, namespaces, bridges or mounts are left. Idempotent.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

[ "$(id -u)" = 0 ] || mc_die "run as root"

# live PID...: those of the pids that are still running (a zombie has ended).
live() {
    local p
    for p in "$@"; do
        if [ -d "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then
            echo "$p"
        fi
    done
}

# kill_and_wait PID...: SIGTERM, then SIGKILL what is left after 10 s, and wait for it to end.
kill_and_wait() {
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null
    local deadline=$((SECONDS + 10)) left killed=
    while left=$(live "$@"); [ -n "$left" ]; do
        if [ -z "$killed" ] && [ $SECONDS -ge $deadline ]; then
            kill -KILL $left 2>/dev/null
            killed=1 deadline=$((SECONDS + 5))
        elif [ -n "$killed" ] && [ $SECONDS -ge $deadline ]; then
            return 1
        fi
        sleep 0.2
    done
}

left=()  # what could not be removed, reported at the end

# Cancel jobs while the controller still runs, so that nothing is requeued later.
if command -v scancel >/dev/null && [ -f "$MC_CONF_DIR/slurm.conf" ] && mc_alive "$MC_STATE/slurmctld.pid"; then
    scancel --full --quiet --cluster="$MC_CLUSTER" --user=root 2>/dev/null || scancel --quiet --user=root 2>/dev/null || true
fi

# Everything that runs in a node's namespace belongs to the cluster: job steps, Ray, slurmd.
for nsfile in /run/netns/llmnode* "/run/netns/$MC_LOGIN_NS" "/run/netns/$MC_LAPTOP_NS"; do
    [ -e "$nsfile" ] || continue
    ns=$(basename "$nsfile")
    pids=$(ip netns pids "$ns" 2>/dev/null)
    kill_and_wait $pids || left+=("processes in $ns: $(live $pids | tr '\n' ' ')")
    ip netns del "$ns" 2>/dev/null || true
done
for f in "$MC_STATE"/slurmd-*.pid "$MC_STATE/slurmctld.pid"; do
    [ -s "$f" ] && mc_alive "$f" && kill_and_wait "$(cat "$f")"
    rm -f "$f"
done
munged=
if [ -s "$MC_STATE/munged.pid" ]; then  # only the munged that up.sh started
    munged=$(cat "$MC_STATE/munged.pid")
    mc_alive "$MC_STATE/munged.pid" && kill_and_wait "$munged"
    rm -f "$MC_STATE/munged.pid"
fi

for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep -e '^veth-llmnode' -e "^veth-$MC_LOGIN_NS" | cut -d@ -f1); do
    ip link del "$link" 2>/dev/null || true
done
ip link del "$MC_BRIDGE" 2>/dev/null || true

if grep -q "$MC_HOSTS_TAG" /etc/hosts; then
    hosts_tmp=$(mktemp)
    grep -v "$MC_HOSTS_TAG" /etc/hosts >"$hosts_tmp"
    cat "$hosts_tmp" >/etc/hosts
    rm -f "$hosts_tmp"
fi
# Check that nothing of the cluster is left: its daemons (known by their configuration file),
# namespaces, links, mounts and /etc/hosts lines.
for p in $(pgrep -f -- "-f $MC_CONF_DIR/slurm.conf" || true); do
    [ -n "$(live "$p")" ] && left+=("process $p: $(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null)")
done
[ -n "$munged" ] && [ -n "$(live "$munged")" ] && left+=("munged $munged")
for nsfile in /run/netns/llmnode* "/run/netns/$MC_LOGIN_NS" "/run/netns/$MC_LAPTOP_NS"; do [ -e "$nsfile" ] && left+=("namespace $nsfile"); done
ip link show "$MC_BRIDGE" >/dev/null 2>&1 && left+=("bridge $MC_BRIDGE")
ip -o link show 2>/dev/null | grep -q -e 'veth-llmnode' -e "veth-$MC_LOGIN_NS" && left+=("veth links")
grep -q "$MC_STATE" /proc/self/mountinfo && left+=("mounts under $MC_STATE")
grep -q "$MC_HOSTS_TAG" /etc/hosts && left+=("/etc/hosts lines")
if [ ${#left[@]} -gt 0 ]; then
    printf 'minicluster: left after tear-down: %s\n' "${left[@]}" >&2
    exit 1
fi
mc_log "down"
