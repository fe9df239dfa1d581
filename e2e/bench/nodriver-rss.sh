#!/usr/bin/env bash
# Run from the repository root after make build: bash e2e/bench/nodriver-rss.sh
# RSS of the agent without a GPU driver, after 1,000 scrapes of its /metrics (local one-node mode, fakevllm engine).
set -euo pipefail
W=$(mktemp -d); mkdir -p "$W/m"
bin/llm-agent run --model "$W/m" --vllm-bin bin/fakevllm --state-dir "$W/state" --targets-dir none --port 18700 --metrics-port 18701 >"$W/agent.log" 2>&1 &
A=$!
trap 'kill -TERM $A 2>/dev/null; wait $A 2>/dev/null; rm -rf "$W"' EXIT
for i in $(seq 300); do curl -sf http://127.0.0.1:18701/readyz >/dev/null && break; sleep 0.1; done
echo "date: $(date -u +%FT%TZ)  machine: $(nproc) cores, $(uname -r)  agent: $(bin/llm-agent --version)"
grep VmRSS /proc/$A/status | sed 's/^/before scrapes: /'
for i in $(seq 1000); do curl -s -o /dev/null http://127.0.0.1:18701/metrics; done
grep VmRSS /proc/$A/status | sed 's/^/after 1000 scrapes: /'
grep -c 'llm_agent_gpu_up{.*} 0' <(curl -s http://127.0.0.1:18701/metrics) | sed 's/^/gpu collector down (no driver): /'
