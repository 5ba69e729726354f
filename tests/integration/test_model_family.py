"""scripts/make_model_family.py trains the same weights every time, and its cache key follows its recipe.

It runs under the vLLM venv's python (torch and transformers live there), on a shrunken recipe (a few files, a
few steps) so two full trainings take seconds; the code path is the one that trains the real family.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.engine.provision import REPO_ROOT, vllm_python

pytestmark = pytest.mark.engine  # needs the vLLM venv (no server)

TWO_SMALL_TRAININGS = """
import copy, json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import make_model_family as family

recipe = copy.deepcopy(family.RECIPE)
recipe.update(vocab_size=300, prompts=4)
recipe["target"].update(steps=4)
for size in recipe["drafts"].values():
    size.update(steps=3)
train, held_out = family.read_texts(recipe)
train, held_out = train[:4], held_out[:2]
reports = [family.build(Path(tempfile.mkdtemp()), train, held_out, recipe) for _ in range(2)]
keys = {
    "same": [family.recipe_key(train, held_out, recipe) for _ in range(2)],
    "other_seed": family.recipe_key(train, held_out, {**recipe, "seed": recipe["seed"] + 1}),
    "other_text": family.recipe_key(train[:3], held_out, recipe),
    "real": family.recipe_key(*family.read_texts()),
}
print(json.dumps({"hashes": [{k: v["sha256"] for k, v in r["models"].items()} for r in reports], "keys": keys}))
"""


def two_trainings() -> dict[str, Any]:
    command = [str(vllm_python()), "-c", TWO_SMALL_TRAININGS, str(REPO_ROOT / "scripts")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_two_trainings_of_the_same_recipe_give_byte_identical_weights_and_the_key_follows_the_recipe() -> None:
    result = two_trainings()
    first: dict[str, str] = result["hashes"][0]
    second: dict[str, str] = result["hashes"][1]
    assert set(first) == {"target", "draft-small", "draft-large"}
    assert first == second
    keys: dict[str, Any] = result["keys"]
    assert keys["same"][0] == keys["same"][1]
    assert len({keys["same"][0], keys["other_seed"], keys["other_text"], keys["real"]}) == 4
