#!/usr/bin/env bash
# Brings up (idempotently) a real Slurm cluster of MC_NODES nodes on this machine. Root only.
# Needs: slurm-wlm, munge, iproute2, util-linux (installed by .ci/run or `make deps`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

[ "$(id -u)" = 0 ] || mc_die "run as root: the cluster needs network namespaces and daemons"
for cmd in slurmctld slurmd munged ip nsenter unshare sinfo scontrol; do
    command -v "$cmd" >/dev/null || mc_die "$cmd not found; install slurm-wlm munge iproute2 (make deps)"
done
mkdir -p "$MC_STATE" "$MC_LOG_DIR" "$MC_CONF_DIR" /var/spool/slurmctld-$MC_CLUSTER /var/spool/slurmd

# --- munge -------------------------------------------------------------------------------------
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || mc_die "/etc/munge/munge.key is missing; reinstall munge"
    runuser -u munge -- /usr/sbin/munged --force
    mc_wait 10 munged sh -c 'munge -n | unmunge'
    # The daemon's own pid file: pgrep would also match a forking parent not yet reaped.
    cp /run/munge/munged.pid "$MC_STATE/munged.pid"
fi

# --- configuration -----------------------------------------------------------------------------
conf=$MC_CONF_DIR/slurm.conf
if [ -f "$conf" ] && ! grep -q "ClusterName=$MC_CLUSTER" "$conf"; then
    mc_die "$conf exists and is not this mini-cluster's; move it away first"
fi
last=$MC_NODES
cat >"$conf" <<EOF
# Written by llm-agent e2e/cluster/up.sh: a test cluster of namespaces on one machine.
ClusterName=$MC_CLUSTER
SlurmctldHost=$MC_CTL_HOST($MC_CTL_IP)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# A job whose dependency a time meets (a service's successor, after:JOB+MIN) starts at the next
# scheduling pass; Slurm's defaults (60 s, backfill 30 s) left 2-minute test jobs up to 37 s late.
SchedulerParameters=sched_interval=10,bf_interval=10
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=30
MinJobAge=600
MessageTimeout=20
# A node whose slurmd stops answering is declared DOWN after this long and its jobs end
# (NODE_FAIL). Slurm's default is 300 s; TestLostNode waits for it, so the test cluster says 30.
SlurmdTimeout=30
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld-$MC_CLUSTER
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$MC_STATE/slurmctld.pid
SlurmdPidFile=$MC_STATE/slurmd-%n.pid
SlurmctldLogFile=$MC_LOG_DIR/slurmctld-$MC_CLUSTER.log
SlurmdLogFile=$MC_LOG_DIR/slurmd-%n.log
NodeName=node[1-$last] NodeAddr=$MC_NET.[1-$last] CPUs=$MC_CPUS Sockets=1 CoresPerSocket=$MC_CPUS ThreadsPerCore=1 RealMemory=4000 Gres=gpu:$MC_GPUS State=UNKNOWN
PartitionName=debug Nodes=node[1-$last] Default=YES MaxTime=INFINITE State=UP
EOF
echo "CgroupPlugin=cgroup/v1" >"$MC_CONF_DIR/cgroup.conf"
echo "NodeName=node[1-$last] Name=gpu File=/dev/fakegpu[0-$((MC_GPUS - 1))]" >"$MC_CONF_DIR/gres.conf"
for g in $(seq 0 $((MC_GPUS - 1))); do
    [ -e /dev/fakegpu$g ] || mknod /dev/fakegpu$g c 1 3
done

# --- network: a bridge in the root namespace, a namespace per node --------------------------------
if ! ip link show "$MC_BRIDGE" >/dev/null 2>&1; then
    ip link add "$MC_BRIDGE" type bridge
    ip addr add "$MC_CTL_IP/24" dev "$MC_BRIDGE"
fi
ip link set "$MC_BRIDGE" up
hosts_tmp=$(mktemp)
grep -v "$MC_HOSTS_TAG" /etc/hosts >"$hosts_tmp" || true
echo "$MC_CTL_IP $MC_CTL_HOST $MC_HOSTS_TAG" >>"$hosts_tmp"
for i in $(seq 1 "$MC_NODES"); do
    ns=$(mc_ns "$i")
    if [ ! -e "/run/netns/$ns" ]; then
        ip netns add "$ns"
    fi
    if ! ip link show "veth-$ns" >/dev/null 2>&1; then
        ip link add "veth-$ns" type veth peer name eth0 netns "$ns"
        ip link set "veth-$ns" master "$MC_BRIDGE"
        ip -n "$ns" addr add "$MC_NET.$i/24" dev eth0
    fi
    ip link set "veth-$ns" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    echo "$MC_NET.$i $(mc_node "$i") $MC_HOSTS_TAG" >>"$hosts_tmp"
done
# The login host: on the bridge, and on a link of its own to the laptop. It forwards nothing
# (a new namespace has ip_forward off), so the laptop reaches the nodes only through ssh.
[ -e "/run/netns/$MC_LOGIN_NS" ] || ip netns add "$MC_LOGIN_NS"
[ -e "/run/netns/$MC_LAPTOP_NS" ] || ip netns add "$MC_LAPTOP_NS"
if ! ip link show "veth-$MC_LOGIN_NS" >/dev/null 2>&1; then
    ip link add "veth-$MC_LOGIN_NS" type veth peer name eth0 netns "$MC_LOGIN_NS"
    ip link set "veth-$MC_LOGIN_NS" master "$MC_BRIDGE"
    ip -n "$MC_LOGIN_NS" addr add "$MC_LOGIN_IP/24" dev eth0
fi
if ! ip -n "$MC_LOGIN_NS" link show outside >/dev/null 2>&1; then
    ip -n "$MC_LOGIN_NS" link add outside type veth peer name eth0 netns "$MC_LAPTOP_NS"
    ip -n "$MC_LOGIN_NS" addr add "$MC_LOGIN_OUTSIDE_IP/24" dev outside
    ip -n "$MC_LAPTOP_NS" addr add "$MC_LAPTOP_IP/24" dev eth0
fi
ip link set "veth-$MC_LOGIN_NS" up
for ns in "$MC_LOGIN_NS" "$MC_LAPTOP_NS"; do ip -n "$ns" link set lo up; done
ip -n "$MC_LOGIN_NS" link set eth0 up
ip -n "$MC_LOGIN_NS" link set outside up
ip -n "$MC_LAPTOP_NS" link set eth0 up
echo "$MC_LOGIN_IP $MC_LOGIN_HOST $MC_HOSTS_TAG" >>"$hosts_tmp"
cat "$hosts_tmp" >/etc/hosts  # rewrite in place: /etc/hosts may be a bind mount
rm -f "$hosts_tmp"

# --- daemons -------------------------------------------------------------------------------------
if ! mc_alive "$MC_STATE/slurmctld.pid"; then
    # slurmctld checks that its host name is SlurmctldHost: give it its own UTS namespace.
    setsid unshare --uts sh -c "hostname $MC_CTL_HOST; exec slurmctld -D -f $conf" \
        >>"$MC_LOG_DIR/slurmctld-$MC_CLUSTER.out" 2>&1 </dev/null &
    mc_wait 30 "slurmctld to answer" scontrol ping
fi
# A checkout (or environment) under /tmp would vanish under each node's own /tmp: such folders
# are carried through, bound back at the same path on every node. Others stay as they are.
keep=()
for dir in "$MC_ROOT" ${LLM_AGENT_VENV:+"$LLM_AGENT_VENV"}; do
    case $(realpath -m "$dir")/ in /tmp/*) [ -d "$dir" ] && keep+=("$(realpath "$dir")") ;; esac
done
mkdir -p "$MC_STATE/keep"
node_setup() { # the commands that give a node its own /tmp, keeping "${keep[@]}" visible
    local cmds=""
    if [ ${#keep[@]} -gt 0 ]; then
        cmds="mount --bind /tmp $MC_STATE/keep && mount -t tmpfs -o mode=1777 tmpfs /tmp"
        for dir in "${keep[@]}"; do
            cmds+=" && mkdir -p $(printf %q "$dir") && mount --bind $(printf %q "$MC_STATE/keep${dir#/tmp}") $(printf %q "$dir")"
        done
        cmds+=" && umount $MC_STATE/keep"
    else
        cmds="mount -t tmpfs -o mode=1777 tmpfs /tmp"
    fi
    echo "$cmds && mount -t tmpfs -o mode=1777 tmpfs /dev/shm"
}
for i in $(seq 1 "$MC_NODES"); do
    node=$(mc_node "$i")
    ns=$(mc_ns "$i")
    mc_alive "$MC_STATE/slurmd-$node.pid" && continue
    mkdir -p "/var/spool/slurmd/$node"
    # Own hostname, and /tmp and /dev/shm of its own (Ray writes /tmp/ray on every node).
    setsid nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private sh -c \
        "hostname $node && $(node_setup) && exec slurmd -D -N $node -f $conf" \
        >>"$MC_LOG_DIR/slurmd-$node.out" 2>&1 </dev/null &
done

# --- wait for the nodes to be up: idle, or running jobs when the cluster was already up --------
nodes_up() {
    local states
    states=$(sinfo -h -N -o '%T' 2>/dev/null) || return 1
    [ "$(echo "$states" | wc -l)" -eq "$MC_NODES" ] || return 1
    ! echo "$states" | grep -qvxE 'idle|allocated|mixed|completing'
}
deadline=$((SECONDS + 60))
until nodes_up; do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qE 'down|drain|unknown'; then
        scontrol update nodename="node[1-$last]" state=resume >/dev/null 2>&1 || true
    fi
    if [ $SECONDS -ge $deadline ]; then
        sinfo -N >&2 || true
        mc_die "nodes did not come up within 60s; see $MC_LOG_DIR/slurmd-node*.log"
    fi
    sleep 0.5
done
mc_log "up: $MC_NODES nodes ($(sinfo -h -o '%N %T' | tr '\n' ' '))"
