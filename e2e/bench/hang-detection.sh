#!/usr/bin/env bash
# Time from SIGSTOP of the engine to a new engine and to ready again, for one or more builds of
# the agent, in local one-node mode with the stand-in engine and each build's default liveness
# settings. Needs: make build. Usage: bash e2e/bench/hang-detection.sh [AGENT_BIN...]
# (default bin/llm-agent); two rounds per build, alternating.
set -euo pipefail
bins=("${@:-bin/llm-agent}")
work=$(mktemp -d)
agent=
trap '[ -n "$agent" ] && kill -TERM "$agent" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/model"
# engine_pid: the stand-in engine below this run's agent (its reaper's child).
engine_pid() {
    local reaper
    reaper=$(pgrep -P "$agent" | head -1 || true)
    [ -z "$reaper" ] || pgrep -P "$reaper" -x fakevllm || true
}
# ready: the agent's /readyz, on the metrics port its connection file names (a busy preferred
# port falls back to another).
ready() {
    local port
    port=$(grep -o '"metrics_port": *[0-9]*' "$state/connection.json" 2>/dev/null | grep -o '[0-9]*$') || return 1
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null
}
for round in 1 2; do
    for bin in "${bins[@]}"; do
        state=$work/state-$round-$(basename "$(dirname "$bin")")
        "$bin" run --model "$work/model" --vllm-bin "$PWD/bin/fakevllm" --state-dir "$state" \
            --targets-dir none --port 18800 --metrics-port 18801 >"$work/agent.log" 2>&1 &
        agent=$!
        deadline=$((SECONDS + 60))
        until ready && [ -n "$(engine_pid)" ]; do
            [ $SECONDS -lt $deadline ] || { echo "not ready"; cat "$work/agent.log"; exit 1; }
            sleep 0.1
        done
        old=$(engine_pid)
        start=$(date +%s.%N)
        kill -STOP "$old"
        until [ -n "$(engine_pid)" ] && [ "$(engine_pid)" != "$old" ]; do sleep 0.1; done
        new=$(date +%s.%N)
        until ready; do sleep 0.1; done
        end=$(date +%s.%N)
        echo "round $round: $("$bin" --version 2>&1 | head -1): SIGSTOP to a new engine $(awk -v a="$start" -v b="$new" 'BEGIN{printf "%.1f", b-a}') s, to ready again $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}') s"
        grep -E 'unhealthy|restarting:' "$work/agent.log" | head -2 | sed 's/^/    /'
        kill -TERM "$agent"; wait "$agent" || true
        agent=
    done
done
