#!/usr/bin/env bash
# Runs on a GPU machine after e2e/bench/gpu-node.sh's set-up (binaries in .device/): the head's two
# scrape paths, each next to the engine's own /metrics timed in the same run. /metrics is the
# agent's own series, the GPU's, the children's and the node's; /metrics/engine passes the
# engine's own /metrics through, so the engine's time is a floor under it. Writes a summary
# line per round to stdout and the JSON to $OUT.
set -uo pipefail
out=${OUT:-./out}
mkdir -p "$out"
. "$(dirname "$0")/device-common.sh"
p50() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f %.2f %d" % (d["scrape"]["p50_ms"], d["scrape"]["p99_ms"], d["agent_rss_kib"]))' "$1"; }

start_agent 0 head || exit 1
# The engine listens on its Unix socket behind the gateway, as the head reaches it.
engine=$(grep -o 'engine=unix:[^ ]*' "$out/head.log" | head -1 | cut -d: -f2)
for round in 1 2 3; do
    "$bin/gpuscrape" -url http://127.0.0.1:9500/metrics -pid "$agent" -n 1000 -smi-runs 1 >"$out/head-metrics-$round.json"
    "$bin/gpuscrape" -url http://127.0.0.1:9500/metrics/engine -pid "$agent" -n 1000 -smi-runs 1 >"$out/head-engine-$round.json"
    "$bin/gpuscrape" -unix-socket "$engine" -url http://engine/metrics -pid "$agent" -n 1000 -smi-runs 1 >"$out/engine-$round.json"
    echo "round $round: head /metrics p50 p99 rss_kib $(p50 "$out/head-metrics-$round.json")" \
        "| head /metrics/engine p50 p99 $(p50 "$out/head-engine-$round.json" | cut -d' ' -f1-2)" \
        "| engine alone p50 p99 $(p50 "$out/engine-$round.json" | cut -d' ' -f1-2)"
done
stop_agent
