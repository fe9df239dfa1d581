#!/usr/bin/env bash
# Runs on a GPU machine (binaries in .device/, make device-bins): the web page's status of a
# real GPU node. A head in local one-node mode on the real NVML, signed in to through the page's
# own API as a browser does (a JSON POST, then the session's cookie); its status read idle and
# under a bf16 matmul load, each next to nvidia-smi's reading of the same GPU. Writes to $OUT.
set -uo pipefail
out=${OUT:-./out}
mkdir -p "$out"
. "$(dirname "$0")/device-common.sh"
state=$(mktemp -d)
env CUDA_VISIBLE_DEVICES=0 "$bin/llm-agent" run --model "$model" --vllm-bin "$bin/fakevllm" \
    --state-dir "$state" --targets-dir none --port 8000 --metrics-port 9500 >"$out/webui-head.log" 2>&1 &
agent=$!
wait_ready 9500 "$out/webui-head.log" || exit 1
for _ in $(seq 300); do curl -sf http://127.0.0.1:8000/readyz >/dev/null && break; sleep 0.1; done
jar=$(mktemp)
# The key goes in the body, from a file, never on a command line.
python3 -c 'import json,sys; print(json.dumps({"key": open(sys.argv[1]).read().strip()}))' "$state/api_key" |
    curl -sf -c "$jar" -H 'Content-Type: application/json' -H 'Origin: http://127.0.0.1:8000' \
        --data-binary @- http://127.0.0.1:8000/ui/api/session >/dev/null || { echo "sign-in failed"; exit 1; }
smi() { nvidia-smi --id=0 --query-gpu=name,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits; }
status() { curl -sf -b "$jar" http://127.0.0.1:8000/ui/api/status; }
echo "== idle"; echo "nvidia-smi: $(smi)"; status | tee "$out/webui-status-idle.json"; echo
python3 -c 'import torch,time
a=torch.randn(8192,8192,device="cuda",dtype=torch.bfloat16)
t=time.time()
while time.time()-t<30: a@a
torch.cuda.synchronize()' &
load=$!
# Until the page shows the load (its answer is kept 2 s; NVML's utilisation is over its last
# sample period), at most 20 s.
start=$(date +%s.%N)
for _ in $(seq 200); do
    status >"$out/webui-status-load.json"
    python3 -c 'import json,sys; g=json.load(open(sys.argv[1]))["nodes"][0]["gpus"]; sys.exit(0 if g and g[0]["utilization"] >= 0.9 else 1)' \
        "$out/webui-status-load.json" && break
    sleep 0.1
done
echo "== under a bf16 matmul load, shown $(python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$start" "$(date +%s.%N)") s after it began"
echo "nvidia-smi: $(smi)"; cat "$out/webui-status-load.json"; echo
echo "nvidia-smi after: $(smi)"
wait "$load"
curl -s -o /dev/null -w 'page: %{http_code} %{size_download} bytes\n' -b "$jar" http://127.0.0.1:8000/ui/
stop_agent
