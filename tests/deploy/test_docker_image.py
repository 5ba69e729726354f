"""The Dockerfile: hadolint, then a real build and run on a local Docker engine.

No registry image can be pulled here, so the base is a Debian bookworm root made by debootstrap and imported
(deploy/docker/make-base-image.sh; its python3 is 3.11, as in python:3.11-slim). The test starts its own dockerd
(vfs storage, no bridge network, data kept under $SPEC_SIDECAR_CACHE/docker so layers are reused) and stops it.
The container runs the way the chart runs it: non-root, read-only root filesystem, all capabilities dropped,
a tmpfs on /tmp; it scrapes a stand-in engine on 127.0.0.1 (host network) and must export what it read.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.tooling import ROOT, run, tools
from tests.support.payloads import vllm_payload
from tests.support.replay import free_port, metrics_replay

CACHE = Path(os.environ.get("SPEC_SIDECAR_CACHE", Path.home() / ".cache" / "spec-sidecar"))
IMAGE = "spec-sidecar:test"
BASE = "spec-sidecar-base:bookworm"


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = run([tools()["hadolint"], ROOT / "Dockerfile"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


@pytest.fixture(scope="module")
def docker_env() -> Iterator[dict[str, str]]:
    tools()  # installs docker.io and debootstrap when missing
    # One dockerd per data root: a second test session on this machine waits here instead of sharing it.
    (CACHE / "docker").mkdir(parents=True, exist_ok=True)
    with (CACHE / "docker" / "data.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _dockerd()


def _dockerd() -> Iterator[dict[str, str]]:
    workdir = Path(tempfile.mkdtemp(prefix="dk-"))  # short: containerd's socket paths must fit in 108 bytes
    socket_path = workdir / "docker.sock"
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket_path}", "DOCKER_BUILDKIT": "0"}
    log = (workdir / "dockerd.log").open("wb")
    daemon = subprocess.Popen(
        [
            str(tools()["dockerd"]),
            "--storage-driver=vfs",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            f"--host=unix://{socket_path}",
            f"--data-root={CACHE / 'docker' / 'data'}",
            f"--exec-root={workdir / 'exec'}",
            f"--pidfile={workdir / 'docker.pid'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(lambda: _docker(env, "version", check=False).returncode == 0, 60, "dockerd")
        yield env
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        _unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def _unmount_under(workdir: Path) -> None:
    """dockerd leaves its network namespace bind mount behind on shutdown; nothing else mounts there."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(workdir) + "/")), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)


def _docker(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(tools()["docker"]), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def image(docker_env: dict[str, str]) -> str:
    made = subprocess.run(
        ["bash", str(ROOT / "deploy" / "docker" / "make-base-image.sh")],
        env=docker_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0 and made.stdout.strip() == BASE, made.stderr
    # Host networking only for the build's pip (the engine has no bridge); the image itself needs none.
    build = ("build", "--quiet", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE}")
    # The build stage gets a tag too, so pruning keeps its dependency layer cached for the next run.
    _docker(docker_env, *build, "--target", "build", "-t", IMAGE + "-build-stage", str(ROOT))
    _docker(docker_env, *build, "-t", IMAGE, str(ROOT))
    _docker(docker_env, "image", "prune", "--force")  # drop the previous build's layers: vfs copies every layer
    return IMAGE


def test_image_runs_as_non_root_with_a_python_healthcheck(docker_env: dict[str, str], image: str) -> None:
    inspected = json.loads(_docker(docker_env, "image", "inspect", image).stdout)[0]
    print(f"image size: {inspected['Size'] / 1e6:.0f} MB")  # reported with -s; base alone is ~170 MB
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["spec-sidecar"]
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python3"]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]


@pytest.fixture
def container(docker_env: dict[str, str], image: str) -> Iterator[Callable[..., str]]:
    names: list[str] = []

    def start(*args: str, env: dict[str, str] | None = None) -> str:
        name = f"spec-sidecar-test-{os.getpid()}-{len(names)}"
        flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        _docker(
            docker_env,
            "run", "--detach", "--name", name, "--network", "host",
            "--read-only", "--tmpfs", "/tmp:size=16m", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            *flags, image, *args,
        )  # fmt: skip
        names.append(name)
        return name

    yield start
    for name in names:
        _docker(docker_env, "rm", "--force", name, check=False)


def test_container_serves_health_readiness_and_the_metrics_it_scraped_on_a_read_only_root(
    docker_env: dict[str, str], container: Callable[..., str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with metrics_replay() as engine:
        engine.serve(vllm_payload(drafts=0, draft_tokens=0, accepted=0, per_position=(0, 0)))
        name = container(
            "run", "--vllm-url", engine.url, "--scrape-interval", "0.5", "--window", "30", "--min-draft-tokens", "10",
            env={"SPEC_SIDECAR_LISTEN": f"127.0.0.1:{port}"},
        )  # fmt: skip

        def answers(path: str) -> bool:
            try:
                return httpx.get(url + path, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(lambda: answers("/healthz"), 60, "/healthz")
        _wait(lambda: answers("/readyz"), 30, "/readyz after the first good scrape")
        hits = engine.behaviour.hits
        engine.serve(vllm_payload(drafts=100, draft_tokens=400, accepted=120, per_position=(70, 50)))
        _wait(lambda: engine.behaviour.hits >= hits + 3, 30, "more scrapes")

        def ratio() -> float | None:
            for line in httpx.get(url + "/metrics", timeout=2).text.splitlines():
                if line.startswith('specdecode_acceptance_ratio{model_name="tiny"}'):
                    return float(line.split()[-1])
            return None

        _wait(lambda: ratio() is not None, 30, "specdecode_acceptance_ratio")
        assert ratio() == pytest.approx(120 / 400)

        # Docker's own healthcheck (python, no curl) reaches the port given by SPEC_SIDECAR_LISTEN.
        def health() -> str:
            state = json.loads(_docker(docker_env, "inspect", name).stdout)[0]["State"]
            return str(state.get("Health", {}).get("Status"))

        _wait(lambda: health() == "healthy", 60, "docker healthcheck")

        assert _docker(docker_env, "exec", name, "id", "-u").stdout.strip() == "10001"
        # The Kubernetes actuator imports in the trimmed image (kubernetes/aio and pip were removed for size).
        _docker(docker_env, "exec", name, "python3", "-c", "import sidecar.adapters.kube.actuator")
        denied = _docker(docker_env, "exec", name, "python3", "-c", "open('/opt/venv/x', 'w')", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        logs = _docker(docker_env, "logs", name).stdout + _docker(docker_env, "logs", name).stderr
        assert "Traceback" not in logs
