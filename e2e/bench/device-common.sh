# Sourced by the GPU-machine benchmarks (gpu-node.sh, gpu-head.sh): what they share. Needs $out.
# A machine without curl gets a stand-in that GETs the last argument and prints the body.
command -v curl >/dev/null || curl() { python3 -c 'import sys,urllib.request
try:
    r=urllib.request.urlopen(sys.argv[-1],timeout=5); sys.stdout.write(r.read().decode())
except Exception: sys.exit(22)' "$@"; }
bin=.device
model=$(mktemp -d)/tiny
mkdir -p "$model"

# wait_ready PORT LOG: poll the agent's /readyz for up to 30 s; on failure show its log.
wait_ready() {
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0
        sleep 0.1
    done
    echo "agent not ready"; cat "$2"; return 1
}

# start_agent CUDA_VISIBLE_DEVICES LOG [NAME=VALUE...]: a head in local one-node mode, with
# fakevllm as its engine, on port 8000 and metrics port 9500; its pid in $agent.
start_agent() {
    local devices=$1 log=$out/$2.log
    shift 2
    env "$@" CUDA_VISIBLE_DEVICES="$devices" "$bin/llm-agent" run --model "$model" --vllm-bin "$bin/fakevllm" \
        --state-dir "$(mktemp -d)" --targets-dir none --port 8000 --metrics-port 9500 >"$log" 2>&1 &
    agent=$!
    wait_ready 9500 "$log"
}

stop_agent() {
    kill -TERM "$agent"; wait "$agent"; echo "agent exit code: $?"
}
