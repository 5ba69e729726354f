"""Writes a wide copy of the family's target: the same next-token function at the compute cost of a larger model.

Run with the vLLM venv's python (it has torch and transformers):
    <vllm-venv>/bin/python scripts/widen_target.py FAMILY_DIR --hidden 512 --layers 8 --intermediate 1536
Prints the copy's directory, FAMILY_DIR/target-wide-<hidden>x<layers>x<intermediate>; a second run finds it
complete and returns at once.

Why: the family's target is tiny, so on a CPU a scheduler step costs about the same whether it verifies 1 token
per request or 5, at any load, and speculation pays at every batch size. A real target's step grows with the
tokens it processes; at high load the K extra tokens per request that speculation verifies cost more than the
accepted drafts save, which is what the load-aware schedule is for. A wide copy brings that back on a CPU while
keeping the trained pair's acceptance exactly: the drafts were distilled from this function.

How the copy computes the same function (every dense matrix just gets larger; zeros cost as much as any weight):
- the hidden size grows by zero columns in the embeddings and lm_head, so the residual stream's new dimensions
  stay exactly zero through every layer (all projections writing to it have zero rows there);
- RMSNorm divides by the root mean square over the hidden size: with the zeros added the mean shrinks by
  old/new, so the norm weights are scaled by sqrt(old/new) and the epsilon by old/new;
- new attention heads (head size unchanged, so the same softmax scale and rotary embedding) have zero query,
  key and value projections and zero output columns; the MLP's new intermediate units have zero weights;
- the new layers after the trained ones write nothing: their attention output and MLP down projections are zero.
The script checks it: both models' logits on the family's prompts must agree to 1e-4.
"""

# transformers 5 ships its model and config constructors without annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import argparse
import fcntl
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
DONE_MARKER = ".complete"
TOLERANCE = 1e-4


def _paste(wide: torch.Tensor, narrow: torch.Tensor) -> None:
    """Writes `narrow` into the leading corner of the zeroed `wide`."""
    wide.zero_()
    wide[tuple(slice(0, n) for n in narrow.shape)] = narrow


def widen(source: LlamaForCausalLM, hidden: int, layers: int, intermediate: int) -> LlamaForCausalLM:
    old = source.config
    head_dim = old.hidden_size // old.num_attention_heads
    if old.num_key_value_heads != old.num_attention_heads:
        raise SystemExit("the target uses grouped-query attention; widening assumes one key/value head per head")
    smaller = hidden < old.hidden_size or layers < old.num_hidden_layers or intermediate < old.intermediate_size
    if smaller or hidden % head_dim:
        raise SystemExit(
            f"the wide copy must be at least the target's size ({old.hidden_size} hidden, {old.num_hidden_layers} "
            f"layers, {old.intermediate_size} intermediate) with a hidden size that is a multiple of {head_dim}"
        )
    shrink = old.hidden_size / hidden
    config = LlamaConfig(
        **{
            **old.to_dict(),
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": hidden // head_dim,
            "num_key_value_heads": hidden // head_dim,
            "head_dim": head_dim,
            "intermediate_size": intermediate,
            "rms_norm_eps": old.rms_norm_eps * shrink,
        }
    )
    wide = LlamaForCausalLM(config).eval()
    narrow = dict(source.state_dict())
    with torch.no_grad():
        for name, tensor in wide.state_dict().items():
            if name in narrow:
                weight = narrow[name] * math.sqrt(shrink) if name.endswith("norm.weight") else narrow[name]
                _paste(tensor, weight)
            else:  # a new layer: it reads the stream and writes nothing back
                tensor.fill_(1.0) if name.endswith("norm.weight") else tensor.zero_()
    return wide


def check_same_function(source: LlamaForCausalLM, wide: LlamaForCausalLM, family: Path) -> float:
    tokenizer = AutoTokenizer.from_pretrained(family / "target")
    prompts = json.loads((family / "prompts.json").read_text())[:8]
    worst = 0.0
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            worst = max(worst, float((source(ids).logits - wide(ids).logits).abs().max()))
    if worst > TOLERANCE:
        raise SystemExit(f"the wide copy's logits differ from the target's by {worst:g} (more than {TOLERANCE:g})")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", type=Path, help="the trained family's directory (scripts/make_model_family.py)")
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--intermediate", type=int, required=True)
    args = parser.parse_args()
    out = args.family / f"target-wide-{args.hidden}x{args.layers}x{args.intermediate}"
    with (args.family / f"{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions asking at once: one writes, the other waits and reuses
        if not (out / DONE_MARKER).exists():
            torch.manual_seed(0)
            source = LlamaForCausalLM.from_pretrained(args.family / "target", dtype=torch.float32).eval()
            wide = widen(source, args.hidden, args.layers, args.intermediate)
            worst = check_same_function(source, wide, args.family)
            shutil.rmtree(out, ignore_errors=True)
            wide.save_pretrained(out, safe_serialization=True)
            for name in COPIED_FILES:
                if (args.family / "target" / name).exists():
                    shutil.copy2(args.family / "target" / name, out / name)
            (out / DONE_MARKER).write_text(json.dumps({"max_logit_difference": worst}) + "\n")
            print(f"wide copy written; largest logit difference from the target {worst:.2e}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
