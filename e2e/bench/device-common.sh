# Sourced by the GPU-machine benchmarks (h100.sh, h100-head.sh): what they share.
# A machine without curl gets a stand-in that GETs the last argument and prints the body.
command -v curl >/dev/null || curl() { python3 -c 'import sys,urllib.request
try:
    r=urllib.request.urlopen(sys.argv[-1],timeout=5); sys.stdout.write(r.read().decode())
except Exception: sys.exit(22)' "$@"; }
bin=.device
model=$(mktemp -d)/tiny
mkdir -p "$model"
