"""Estimates the model family's acceptance per temperature without vLLM, by replaying its rule in torch.

Run with the vLLM venv's python:
    <vllm-venv>/bin/python scripts/simulate_family_acceptance.py [FAMILY_DIR] [--prompts 24] [--drafts target]

vLLM's draft-model speculation (k = 4) drafts greedily and accepts each drafted token with the target's
probability of it at the request's temperature (at 0: when it is the target's top token); the first rejection
ends the step, and the target's own token (resampled from what is left) or a bonus token follows. This replays
that over the family's held-out prompts, 32 tokens each, and prints accepted / drafted per temperature. It is
how the recipe was tuned (a minute per draft, no server); the figures in docs/model-family.md come from vLLM.
`--drafts target` replays the target drafting for itself, the check that tells an engine fault from the models'.
"""

# transformers 5 ships its model constructors without annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

K = 4
MAX_TOKENS = 32
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def pick(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax().item())
    return int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).item())


def acceptance(
    target: LlamaForCausalLM, draft: LlamaForCausalLM, prompts: list[list[int]], temperature: float
) -> float:
    generator = torch.Generator().manual_seed(0)
    accepted = drafted = 0
    torch.set_grad_enabled(False)
    for prompt in prompts:
        ids = list(prompt)
        while len(ids) - len(prompt) < MAX_TOKENS:
            proposal: list[int] = []
            for _ in range(K):
                proposal.append(int(draft(torch.tensor([ids + proposal])).logits[0, -1].argmax().item()))
            logits = target(torch.tensor([ids + proposal])).logits[0, len(ids) - 1 :]
            drafted += K
            for i, token in enumerate(proposal):
                if temperature == 0:
                    ok = int(logits[i].argmax().item()) == token
                else:
                    probs = torch.softmax(logits[i] / temperature, -1)
                    ok = torch.rand(1, generator=generator).item() < probs[token].item()
                if ok:
                    accepted += 1
                    ids.append(token)
                    continue
                rest = logits[i].clone()
                rest[token] = float("-inf")  # the rejected token cannot come back
                ids.append(pick(rest, temperature, generator))
                break
            else:
                ids.append(pick(logits[K], temperature, generator))
    return accepted / drafted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", nargs="?", type=Path, help="the family's directory (default: train or reuse)")
    parser.add_argument("--prompts", type=int, default=24, help="held-out prompts to run (default 24)")
    parser.add_argument("--drafts", help="comma-separated model names in the family (default: every draft-*)")
    parser.add_argument("--temperatures", default=",".join(map(str, TEMPERATURES)), help="comma-separated")
    args = parser.parse_args()
    family: Path = args.family or Path(
        subprocess.run(
            [sys.executable, str(Path(__file__).with_name("make_model_family.py"))],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
    )  # fmt: skip
    torch.set_num_threads(1)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(family / "target")
    target = LlamaForCausalLM.from_pretrained(family / "target").eval()
    texts = json.loads((family / "prompts.json").read_text())[: args.prompts]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    drafts = [family / name for name in args.drafts.split(",")] if args.drafts else sorted(family.glob("draft-*"))
    temperatures = [float(t) for t in args.temperatures.split(",")]
    for draft_dir in drafts:
        draft = LlamaForCausalLM.from_pretrained(draft_dir).eval()
        cells = [f"T={t}: {acceptance(target, draft, prompts, t):.3f}" for t in temperatures]
        print(f"{draft_dir.name}: " + "  ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
