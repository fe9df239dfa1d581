#!/usr/bin/env bash
# Runs on a GPU machine after e2e/bench/h100.sh's set-up (binaries in .device/): the head's
# /metrics under different Go runtime settings, in alternating order, each next to the engine's
# own /metrics timed in the same run. The head fetches and re-exports the engine's metrics on
# every scrape, so the engine's own time is a floor under the head's; the difference is what the
# agent adds. Writes a summary line per run to stdout and the JSON to $OUT.
set -uo pipefail
out=${OUT:-./out}
mkdir -p "$out"
. "$(dirname "$0")/device-common.sh"
p50() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f %.2f %d" % (d["scrape"]["p50_ms"], d["scrape"]["p99_ms"], d["agent_rss_kib"]))' "$1"; }

run() { # $1: label; the rest: environment
    local label=$1 engine
    shift
    start_agent 0 "head-$label" "$@" || exit 1
    # The engine listens on its Unix socket behind the gateway, as the head reaches it.
    engine=$(grep -o 'engine=unix:[^ ]*' "$out/head-$label.log" | head -1 | cut -d: -f2)
    "$bin/gpuscrape" -url http://127.0.0.1:9500/metrics -pid "$agent" -n 1000 -smi-runs 1 >"$out/head-$label.json"
    "$bin/gpuscrape" -unix-socket "$engine" -url http://engine/metrics -pid "$agent" -n 1000 -smi-runs 1 >"$out/engine-$label.json"
    echo "$label: head p50 p99 rss_kib $(p50 "$out/head-$label.json") | engine alone p50 p99 $(p50 "$out/engine-$label.json" | cut -d' ' -f1-2)"
    stop_agent >/dev/null
}
for round in 1 2; do
    run "agent-defaults-$round"
    run "go-defaults-$round" GOGC=100 GOMAXPROCS="$(nproc)"
    run "gogc50-all-procs-$round" GOMAXPROCS="$(nproc)"
done
