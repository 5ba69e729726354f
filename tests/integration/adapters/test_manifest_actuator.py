"""The actuator on a local YAML manifest: multi-document files, comments and layout kept, atomic writes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from sidecar.adapters.manifest import ManifestActuator
from sidecar.core import annotations as ann
from sidecar.core import specargs
from sidecar.core.actuator import Outcome
from tests.support.manifest_files import LIST_MANIFEST, load_all, without_our_annotations

T0 = 1_800_000_000.0


SHELL_MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: llm
spec:
  template:
    spec:
      containers:
      - name: vllm
        command: ["/bin/sh", "-c"]
        args:
        - |
          exec python -m vllm.entrypoints.openai.api_server --model /models/target \\
            --speculative-model=/models/draft --num-speculative-tokens 5 \\
            --port 8000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deployment.yaml"
    path.write_text(text)
    return path


def actuator(path: Path) -> ManifestActuator:
    return ManifestActuator(path, container="vllm", clock=lambda: T0)


def test_disable_edits_only_the_named_container_and_keeps_comments_and_other_documents(tmp_path: Path) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    result = actuator(path).disable("low_acceptance")
    assert result.outcome is Outcome.CHANGED
    text = path.read_text()
    assert text.startswith(LIST_MANIFEST.split("---", maxsplit=1)[0])  # the ConfigMap, byte for byte
    assert "# The serving stack. Keep this comment." in text and "# the target model" in text
    assert 'args: [run, --spec-tokens, "3"]' in text  # the other container untouched
    deployment = load_all(path)[1]
    vllm = deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert vllm["args"] == ["--model", "/models/target", "--max-model-len", "1024"]
    notes = deployment["metadata"]["annotations"]  # type: ignore[index]
    assert notes["team"] == "ml" and notes[ann.STATE] == "off" and notes[ann.REASON] == "low_acceptance"


def test_disable_then_enable_gives_back_the_file_byte_for_byte_apart_from_our_annotations(tmp_path: Path) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    act = actuator(path)
    assert act.disable("low_acceptance").changed
    assert act.enable("manual").changed
    assert without_our_annotations(path.read_text()) == LIST_MANIFEST


def test_a_shell_block_keeps_its_literal_style_and_restores_exactly(tmp_path: Path) -> None:
    path = write(tmp_path, SHELL_MANIFEST)
    act = actuator(path)
    assert act.disable("low_acceptance").changed
    assert "        - |\n" in path.read_text()
    script = without_our_annotations(path.read_text()).split("- |\n")[1]
    assert "--speculative-model" not in script and "--port 8000" in script
    view = act.read()
    assert not view.speculation and view.command == ["/bin/sh", "-c"]
    assert act.enable("manual").changed
    assert without_our_annotations(path.read_text()).replace("  annotations:\n", "") == SHELL_MANIFEST


def test_the_removal_record_in_the_file_restores_the_original_args(tmp_path: Path) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    actuator(path).disable("x")
    deployment = load_all(path)[1]
    removed = json.loads(deployment["metadata"]["annotations"][ann.REMOVED_ARGS])  # type: ignore[index]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]  # type: ignore[index]
    original = YAML(typ="safe").load(LIST_MANIFEST.split("---")[1])["spec"]["template"]["spec"]["containers"][0]
    assert specargs.restore(None, args, removed) == (None, original["args"])


def test_toggles_are_idempotent_and_do_not_rewrite_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    act = actuator(path)
    act.disable("x")
    before = path.stat().st_mtime_ns, path.read_text()
    assert act.disable("x").outcome is Outcome.UNCHANGED
    assert (path.stat().st_mtime_ns, path.read_text()) == before


def test_the_write_is_atomic_and_keeps_the_file_mode(tmp_path: Path) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    path.chmod(0o640)
    inode = path.stat().st_ino
    actuator(path).disable("x")
    assert path.stat().st_ino != inode  # replaced by rename, never truncated in place
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [".deployment.yaml.lock", "deployment.yaml"]


def test_a_reader_never_sees_a_half_written_file(tmp_path: Path) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    act = actuator(path)
    stop = threading.Event()
    bad: list[str] = []

    def read_continuously() -> None:
        while not stop.is_set():
            text = path.read_text()
            if not text.endswith('args: [run, --spec-tokens, "3"]\n'):
                bad.append(text)

    reader = threading.Thread(target=read_continuously)
    reader.start()
    for _ in range(10):
        act.disable("x")
        act.enable("y")
    stop.set()
    reader.join()
    assert bad == []


def test_the_deployment_can_be_chosen_by_name(tmp_path: Path) -> None:
    two = LIST_MANIFEST + "---\n" + SHELL_MANIFEST.replace("name: llm", "name: other")
    path = write(tmp_path, two)
    act = ManifestActuator(path, container="vllm", deployment="other", clock=lambda: T0)
    assert act.disable("x").changed
    first = load_all(path)[1]
    assert specargs.speculation_configured(None, first["spec"]["template"]["spec"]["containers"][0]["args"])  # type: ignore[index]
    assert not act.read().speculation


def test_a_missing_container_or_file_is_an_error_outcome(tmp_path: Path) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    result = ManifestActuator(path, container="nope").disable("x")
    assert result.outcome is Outcome.ERROR and "container_not_found" in result.detail
    gone = ManifestActuator(tmp_path / "absent.yaml", container="vllm").disable("x")
    assert gone.outcome is Outcome.ERROR and "not_found" in gone.detail


@pytest.mark.parametrize("action", ["disable", "enable", "latch"])
def test_a_write_to_a_missing_manifest_leaves_no_lock_file_beside_it(tmp_path: Path, action: str) -> None:
    act = ManifestActuator(tmp_path / "absent.yaml", container="vllm")
    if action == "latch":
        result = act.write_record(ann.ControlRecord(latched="x"), action)
    else:
        result = act.disable("x") if action == "disable" else act.enable("x")
    assert result.outcome is Outcome.ERROR and "no such file" in result.detail
    assert act.errors == {"not_found": 1}
    assert list(tmp_path.iterdir()) == []


def test_a_concurrent_edit_is_a_conflict_not_an_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    act = actuator(path)
    from sidecar.adapters import manifest

    real_dump = manifest._dump

    def dump_while_someone_edits(docs: object, original: str) -> str:
        path.write_text(LIST_MANIFEST.replace("replicas: 2", "replicas: 3"))  # a human saves meanwhile
        return real_dump(docs, original)  # type: ignore[arg-type]

    monkeypatch.setattr(manifest, "_dump", dump_while_someone_edits)
    assert act.disable("x").outcome is Outcome.CONFLICT
    assert "replicas: 3" in path.read_text() and "--speculative-config" in path.read_text()


def test_four_space_sequence_indentation_is_kept(tmp_path: Path) -> None:
    text = LIST_MANIFEST.split("---\n")[1]
    path = write(tmp_path, text)
    act = actuator(path)
    act.disable("x")
    act.enable("y")
    assert without_our_annotations(path.read_text()) == text
    assert path.stat().st_size > len(text)  # our annotations are there


def test_a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    (tmp_path / ".deployment.yaml.spec-sidecar-0123456789abcdef.tmp").write_text("half a manifest")
    actuator(path).disable("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".deployment.yaml.lock", "deployment.yaml"]


def test_the_clean_up_leaves_files_it_did_not_create_next_to_the_manifest(tmp_path: Path) -> None:
    path = write(tmp_path, LIST_MANIFEST)
    others = [
        ".deployment.yaml.swp",  # an editor's swap file
        ".deployment.yaml.orig",
        ".deployment.yaml.k1ll3d",  # what an older spec-sidecar's mkstemp made: no longer ours to judge
        ".deployment.yaml.spec-sidecar-0123.tmp",  # our prefix, but not a name we make
        ".other.yaml.spec-sidecar-0123456789abcdef.tmp",  # ours, for another manifest
    ]
    for name in others:
        (tmp_path / name).write_text("keep me")
    act = actuator(path)
    act.disable("x")
    act.enable("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".deployment.yaml.lock", "deployment.yaml", *others])
    assert all((tmp_path / name).read_text() == "keep me" for name in others)
