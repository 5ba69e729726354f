"""Trains the model family the demo and the real-engine tests serve: one Llama target and two smaller drafts.

Run with the vLLM venv's python (it has torch, transformers and tokenizers):
    <vllm-venv>/bin/python scripts/make_model_family.py
Prints the family's directory, `$SPEC_SIDECAR_CACHE/family-<key>`, where the key is a hash of the recipe below
and of the training text. A second run with the same recipe and text finds the directory complete and returns
at once; a changed recipe trains into a new directory.

Nothing can be downloaded here, so the text is the Python standard library's own top-level modules (the `.py`
files beside `os.py` in the interpreter this runs under): real code and prose, the same on every machine with the
same Python. From it, deterministically (fixed seeds, fixed thread count, deterministic kernels):
1. a byte-level BPE tokenizer, shared by all three models (speculation needs one vocabulary);
2. the target, a small Llama trained on the text;
3. two drafts of different sizes, distilled from the target: each learns the target's next-token distribution
   on the same text (a KL loss against the target's softened outputs), which is how real draft models are made
   and what gives realistic acceptance. The larger draft matches the target more often, so it accepts more.

vLLM drafts greedily and accepts a drafted token with the target's probability of it at the request's
temperature, so acceptance is high at temperature 0 where the draft's top token is the target's, and falls
gradually as sampling spreads the target's probability over more tokens; docs/model-family.md has the table.
"""

# transformers 5 ships its model and config constructors without annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import resource
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.nn import functional
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Everything that changes what gets built. It is hashed (with the text) into the cache key, so editing any value
# here trains a new family in a new directory instead of reusing a stale one.
RECIPE: dict[str, Any] = {
    "version": 1,
    "seed": 20261204,
    "vocab_size": 1024,
    "max_file_bytes": 120_000,  # skip the few huge modules (pydoc_data-like tables) so no single file dominates
    "holdout_every": 12,  # every 12th file is kept out of training and supplies the prompts
    "seq_len": 64,
    "batch": 16,
    "target": {"hidden": 128, "layers": 4, "heads": 4, "intermediate": 384, "steps": 500, "lr": 3e-3},
    "drafts": {
        "draft-small": {"hidden": 32, "layers": 1, "heads": 1, "intermediate": 96, "steps": 300, "lr": 3e-3},
        "draft-large": {"hidden": 64, "layers": 2, "heads": 2, "intermediate": 192, "steps": 300, "lr": 3e-3},
    },
    "distill_temperature": 1.0,
    "prompts": 64,
}
# One thread, whatever the machine: the order of floating-point sums (so the weights) must not depend on the
# core count, and on a shared machine two OpenMP threads wait on each other (measured ~7x slower under load).
THREADS = 1
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def cache_root() -> Path:
    configured = os.environ.get("SPEC_SIDECAR_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "spec-sidecar"


def source_files(recipe: dict[str, Any]) -> list[Path]:
    """The standard library's top-level modules, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"), key=lambda p: p.name)
    return [f for f in files if f.stat().st_size <= recipe["max_file_bytes"]]


def read_texts(recipe: dict[str, Any] = RECIPE) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts)."""
    train: list[str] = []
    held_out: list[str] = []
    for i, path in enumerate(source_files(recipe)):
        text = path.read_text(encoding="utf-8", errors="replace")
        (held_out if i % recipe["holdout_every"] == 0 else train).append(text)
    return train, held_out


def recipe_key(train: list[str], held_out: list[str], recipe: dict[str, Any] = RECIPE) -> str:
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    digest.update(torch.__version__.encode())  # kernels, and so the weights, may differ between torch releases
    for text in [*train, "\x00held-out\x00", *held_out]:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]


def make_prompts(held_out: list[str], recipe: dict[str, Any]) -> list[str]:
    """One line each (the probe's --prompt-file takes a prompt per line): definitions and statements from code
    the models never trained on, long enough to set a context."""
    rng = random.Random(recipe["seed"])
    lines = sorted(
        {
            line.strip()
            for text in held_out
            for line in text.splitlines()
            if 24 <= len(line.strip()) <= 90 and line.strip().startswith(("def ", "class ", "if ", "for ", "return "))
        }
    )
    rng.shuffle(lines)
    return lines[: recipe["prompts"]]


def build_tokenizer(texts: list[str], out: Path, vocab_size: int) -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return tokenizer


def new_model(size: dict[str, Any], tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size["hidden"],
        intermediate_size=size["intermediate"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],  # head size 32: one of the sizes vLLM's CPU attention supports
        num_key_value_heads=size["heads"],
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def batches(stream: torch.Tensor, recipe: dict[str, Any], steps: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    seq = recipe["seq_len"]
    out = []
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - seq - 1, (recipe["batch"],), generator=generator)
        out.append(torch.stack([stream[s : s + seq] for s in starts.tolist()]))
    return out


def fit(
    model: LlamaForCausalLM, lr: float, tau: float, data: list[torch.Tensor], teacher: LlamaForCausalLM | None
) -> float:
    """AdamW with a linear warm-up and decay. Without a teacher: next-token cross-entropy on the text. With one:
    KL divergence from the teacher's softened next-token distribution (distillation). Returns the last loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = len(data)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.05, (steps - s) / (steps - warmup)))
    )
    model.train()
    loss = torch.tensor(0.0)
    for batch in data:
        if teacher is None:
            loss = model(input_ids=batch, labels=batch).loss
        else:
            with torch.no_grad():
                target_logp = functional.log_softmax(teacher(input_ids=batch).logits / tau, dim=-1)
            logp = functional.log_softmax(model(input_ids=batch).logits / tau, dim=-1)
            pairs = (logp.flatten(0, 1), target_logp.flatten(0, 1))
            loss = functional.kl_div(*pairs, log_target=True, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()
    return float(loss.item())


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path) -> str:
    """Saves a servable model directory; returns the sha256 of its weights (the determinism check)."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # No sampling defaults: a request without `temperature` then gets vLLM's own default, not ours.
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(out)
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def build(out: Path, train_texts: list[str], held_out: list[str], recipe: dict[str, Any] = RECIPE) -> dict[str, Any]:
    started = time.monotonic()

    def progress(what: str) -> None:  # stderr: stdout carries only the directory
        print(f"[{time.monotonic() - started:6.0f} s] {what}", file=sys.stderr, flush=True)

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    seed = recipe["seed"]
    tokenizer = build_tokenizer(train_texts, out / "target", recipe["vocab_size"])
    stream = torch.tensor([t for text in train_texts for t in tokenizer(text)["input_ids"]])
    report: dict[str, Any] = {"train_tokens": len(stream), "models": {}}
    progress(f"tokenizer trained; {len(stream)} training tokens; training the target")

    size = recipe["target"]
    target = new_model(size, tokenizer, seed)
    loss = fit(target, size["lr"], 1.0, batches(stream, recipe, size["steps"], seed), None)
    report["models"]["target"] = {"loss": loss, "sha256": save_model(target, tokenizer, out / "target")}
    for i, (name, size) in enumerate(recipe["drafts"].items()):
        progress(f"distilling {name} from the target")
        draft = new_model(size, tokenizer, seed + 1 + i)
        data = batches(stream, recipe, size["steps"], seed + 100 + i)
        loss = fit(draft, size["lr"], recipe["distill_temperature"], data, target)
        report["models"][name] = {"loss": loss, "sha256": save_model(draft, tokenizer, out / name)}
        report["models"][name]["parameters"] = sum(p.numel() for p in draft.parameters())
    report["models"]["target"]["parameters"] = sum(p.numel() for p in target.parameters())
    (out / "prompts.json").write_text(json.dumps(make_prompts(held_out, recipe), indent=1))
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    # ru_maxrss is in KiB on Linux: the peak of this process, which did all the training.
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return report


def main() -> int:
    train_texts, held_out = read_texts()
    root = cache_root()
    out = root / f"family-{recipe_key(train_texts, held_out)}"
    done = out / "build.json"  # written last: its presence means the family is complete
    root.mkdir(parents=True, exist_ok=True)
    # Two test sessions may ask at once on a fresh machine: one trains, the other waits and reuses.
    with (root / "family.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            print(f"Training the model family (a few minutes, once per recipe) into {out}", file=sys.stderr)
            out.mkdir(exist_ok=True)
            report = build(out, train_texts, held_out)
            (out / "recipe.json").write_text(json.dumps(RECIPE, indent=1, sort_keys=True))
            done.write_text(json.dumps(report, indent=1, sort_keys=True))
            print(f"Trained the model family in {report['wall_seconds']} s into {out}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
