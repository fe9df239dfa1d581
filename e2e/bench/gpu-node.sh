#!/usr/bin/env bash
# Runs on a GPU machine (the device tool's H100 or H200): the agent on its real NVML, against
# nvidia-smi. Expects the binaries in .device/ (built on the dev machine: make device-bins) and
# writes its results to $OUT (default ./out).
set -uo pipefail
out=${OUT:-./out}
mkdir -p "$out"
nvidia-smi -L | tee "$out/nvidia-smi-L.txt"
ldd --version | head -1
. "$(dirname "$0")/device-common.sh"

# smaps PID: resident memory by mapping, largest first.
smaps() {
    grep -E 'VmRSS|RssAnon|RssFile' "/proc/$1/status"
    awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6} /^Rss:/{r[name]+=$2} END{for (n in r) if (r[n] > 200) print r[n] " kB " n}' "/proc/$1/smaps" | sort -rn
}

# 1. By index: the full exposition, then the benchmark (idle, then under a matmul load).
start_agent 0 agent-index || exit 1
curl -s http://127.0.0.1:9500/metrics >"$out/metrics-index.txt"
load="python3 -c 'import torch,time
a=torch.randn(8192,8192,device=\"cuda\",dtype=torch.bfloat16)
t=time.time()
while time.time()-t<45: a@a
torch.cuda.synchronize()'"
"$bin/gpuscrape" -url http://127.0.0.1:9500/metrics -pid "$agent" -n 1000 -smi-runs 20 -load "$load" >"$out/gpu-bench.json"
cat "$out/gpu-bench.json"
smaps "$agent" >"$out/smaps-head.txt"
stop_agent

# 2. A worker's /metrics: the agent's and the GPU's metrics without the engine's. The worker
# joins a "head" that is only a rendezvous file, and its ray is a stand-in that sleeps.
wdir=$(mktemp -d)
printf '#!/bin/sh\nexec sleep 100000\n' >"$wdir/ray-standin"
chmod +x "$wdir/ray-standin"
cat >"$wdir/rendezvous.json" <<JSON
{"job_id":"1","restart_count":0,"head_host":"head","head_address":"127.0.0.1",
 "ports":{"api":8000,"metrics":9501,"ray_gcs":6379,"ray_node_manager":6501,"ray_object_manager":6601,
  "ray_dashboard_agent":6701,"ray_dashboard_agent_grpc":6801,"ray_metrics_export":6901,
  "ray_runtime_env_agent":7001,"ray_worker_min":20000,"ray_worker_max":20199}}
JSON
# A worker joins only a cluster with a token, which it finds beside the rendezvous (mode 0600).
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$wdir/ray_token")
start_worker() { # LOG [NAME=VALUE...]: the worker on metrics port 9501; its pid in $agent.
    local log=$out/$1.log
    shift
    env "$@" SLURM_JOB_ID=1 SLURM_JOB_NODELIST="head,$(hostname)" SLURM_NODEID=1 SLURM_GPUS_ON_NODE=1 CUDA_VISIBLE_DEVICES=0 \
        "$bin/llm-agent" run --model "$model" --ray-bin "$wdir/ray-standin" --state-dir "$wdir" --metrics-port 9501 \
        >"$log" 2>&1 &
    agent=$!
    wait_ready 9501 "$log"
}
start_worker agent-worker || exit 1
"$bin/gpuscrape" -url http://127.0.0.1:9501/metrics -pid "$agent" -n 1000 -smi-runs 20 >"$out/gpu-bench-worker.json"
cat "$out/gpu-bench-worker.json"
smaps "$agent" >"$out/smaps-worker.txt"
cat "$out/smaps-worker.txt"
stop_agent
# The same worker with Go's own runtime defaults (GOGC=100, one processor per core) instead of
# the agent's (GOGC=50, at most 4 processors): what those settings save. gpu-head.sh does the
# same for the head.
start_worker agent-worker-godefaults GOGC=100 GOMAXPROCS="$(nproc)" || exit 1
"$bin/gpuscrape" -url http://127.0.0.1:9501/metrics -pid "$agent" -n 1000 -smi-runs 5 >"$out/gpu-bench-worker-godefaults.json"
grep -E '"(p50_ms|p99_ms|agent_rss_kib)"' "$out/gpu-bench-worker-godefaults.json"
smaps "$agent" | head -4
stop_agent

# 3. By UUID: the same GPU, found by its UUID.
uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader -i 0)
start_agent "$uuid" agent-uuid || exit 1
curl -s http://127.0.0.1:9500/metrics | grep -E '^llm_agent_gpu_(up|memory_total_bytes)' | tee "$out/metrics-uuid.txt"
stop_agent

# 4. A GPU the job does not have: no GPU series, collector down, agent fine.
start_agent 5 agent-wrong || exit 1
curl -s http://127.0.0.1:9500/metrics | grep -E '^llm_agent_(gpu_up|ready)' | tee "$out/metrics-wrong.txt"
stop_agent
grep -h 'gpu' "$out"/agent-*.log | head -20
