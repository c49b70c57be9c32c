#!/usr/bin/env bash
# Install torch into a virtualenv, the right build for this machine, then say which build it is.
#   scripts/install-torch.sh [VENV]            (default .venv; scripts/install.sh calls this)
#   TORCH_SPEC        the requirement (default torch==2.13.0); TORCH_SPEC=torch keeps a torch already there
#   TORCH_CPU_INDEX   PyTorch's CPU wheel index (default https://download.pytorch.org/whl/cpu)
#   PROBE_TIMEOUT     seconds to wait for that index before falling back (default 5)
# Without a GPU, the default index (PyPI) would pull the CUDA build of torch and ~19 CUDA packages
# (several GB): the CPU wheel comes from PyTorch's CPU index instead. Where that index cannot be reached
# (offline, a mirror, a proxy), pip's own configuration decides: the default index and any local
# wheels (find-links) it is set up with.
set -euo pipefail
VENV=${1:-.venv}
PY="$VENV/bin/python"
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-5}

has_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"
}

index_reachable() {
    # A bounded probe (no retries, and `timeout` bounds a hanging DNS lookup too): an unreachable index
    # must cost seconds, not pip's minutes of retries.
    timeout "$((PROBE_TIMEOUT + 1))" "$PY" - "$1" "$PROBE_TIMEOUT" <<'PYEOF' >/dev/null 2>&1
import sys, urllib.request
url, timeout = sys.argv[1].rstrip("/") + "/torch/", float(sys.argv[2])
with urllib.request.urlopen(url, timeout=timeout) as r:
    sys.exit(0 if r.status == 200 else 1)
PYEOF
}

if has_gpu; then
    echo "install-torch: a GPU is present: $TORCH_SPEC from the default index (a CUDA build)" >&2
    "$PY" -m pip install -q "$TORCH_SPEC"
elif index_reachable "$TORCH_CPU_INDEX"; then
    echo "install-torch: no GPU: $TORCH_SPEC from PyTorch's CPU index $TORCH_CPU_INDEX" >&2
    "$PY" -m pip install -q --index-url "$TORCH_CPU_INDEX" "$TORCH_SPEC"
else
    echo "install-torch: no GPU, and $TORCH_CPU_INDEX is unreachable (${PROBE_TIMEOUT} s): $TORCH_SPEC from" \
        "pip's configured index and local wheels" >&2
    "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" - <<'PYEOF'
import torch
cuda = torch.version.cuda
build = f"CUDA {cuda} build" if cuda else "CPU build"
print(f"install-torch: installed torch {torch.__version__} ({build}; CUDA available here: {torch.cuda.is_available()})")
PYEOF
