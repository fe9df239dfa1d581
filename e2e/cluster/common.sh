# Shared settings of the mini-cluster scripts. Sourced, not run.
# One machine, as root: one slurmctld and N slurmd, each slurmd in its own network namespace with
# its own hostname, address on a private bridge, /tmp and /dev/shm.

MC_NODES=${MC_NODES:-3}
MC_GPUS=${MC_GPUS:-2}               # fake GPUs per node, handed out by gres
MC_CPUS=${MC_CPUS:-2}
MC_NET=${MC_NET:-10.77.0}           # private /24 of the test hosts
MC_BRIDGE=${MC_BRIDGE:-llmbr0}
MC_CTL_IP=$MC_NET.254
MC_CTL_HOST=llmctl
MC_CLUSTER=llmmini
MC_CONF_DIR=/etc/slurm
MC_STATE=/var/lib/llm-agent-minicluster  # pid files and markers of this cluster
MC_HOSTS_TAG="# llm-agent-minicluster"
MC_LOG_DIR=/var/log/slurm
MC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)  # the checkout

# The login host sits on the cluster's bridge and on a second network, "outside", whose only
# other host is the laptop: the laptop reaches the login host and nothing else, as from home.
MC_LOGIN_NS=llmlogin
MC_LOGIN_HOST=login
MC_LOGIN_IP=$MC_NET.100
MC_LAPTOP_NS=llmlaptop
MC_OUTSIDE_NET=${MC_OUTSIDE_NET:-10.78.0}
MC_LOGIN_OUTSIDE_IP=$MC_OUTSIDE_NET.1
MC_LAPTOP_IP=$MC_OUTSIDE_NET.2

mc_node() { echo "node$1"; }
mc_ns() { echo "llmnode$1"; }

mc_log() { echo "minicluster: $*" >&2; }
mc_die() { echo "minicluster: error: $*" >&2; exit 1; }

# mc_alive PIDFILE: true if the pid in the file is a live process.
mc_alive() {
    [ -s "$1" ] || return 1
    local pid
    pid=$(cat "$1")
    [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

# mc_wait TIMEOUT_S DESCRIPTION COMMAND...: poll COMMAND until it succeeds or the deadline passes.
mc_wait() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            mc_log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}
