"""The mistakes a new user makes, run through the installed `spec-sidecar` entry point: each one is a single
line on stderr that names what was wrong and what to do, and exit code 2 whatever the subcommand."""

from __future__ import annotations

import http.server
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli_process import ENTRY_POINT, cli
from tests.support.http_stub import serve_http
from tests.support.payloads import vllm_payload
from tests.support.replay import free_port


def one_line_error(done: subprocess.CompletedProcess[str], command: str) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"spec-sidecar {command}: ")
    return lines[0]


class NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def not_vllm() -> Iterator[str]:
    """A web server that is not an engine: every path is a 404."""
    with serve_http(NotFound) as url:
        yield url


def test_a_tap_that_is_not_a_sidecar_is_one_line_with_the_url_tried(tmp_path: Path, not_vllm: str) -> None:
    source = tmp_path / "metrics.txt"
    source.write_text(vllm_payload(drafts=10, draft_tokens=40, accepted=30, per_position=(9, 8, 7, 6)))
    line = one_line_error(cli("report", str(source), "--tap", not_vllm, home=tmp_path), "report")
    assert f"GET {not_vllm}/api/report: HTTP 404" in line and "--tap" in line


def test_report_of_an_address_without_scheme_suggests_the_url(tmp_path: Path) -> None:
    line = one_line_error(cli("report", "127.0.0.1:8000", home=tmp_path), "report")
    assert "no such file" in line and "http://127.0.0.1:8000" in line


def test_run_refuses_an_engine_url_without_scheme_at_start(tmp_path: Path) -> None:
    line = one_line_error(cli("run", "--vllm-url", "127.0.0.1:8000", home=tmp_path), "run")
    assert "--vllm-url" in line and "http://" in line


def test_a_server_that_is_not_vllm_is_named_with_the_url_tried(tmp_path: Path, not_vllm: str) -> None:
    line = one_line_error(cli("report", not_vllm, home=tmp_path), "report")
    assert f"{not_vllm}/metrics" in line and "HTTP 404" in line and "vLLM" in line


@pytest.mark.parametrize("command", ["run", "report", "probe"])
def test_a_threshold_above_the_keep_threshold_is_refused(tmp_path: Path, command: str) -> None:
    source = tmp_path / "metrics.txt"
    source.write_text(vllm_payload(drafts=10, draft_tokens=40, accepted=30, per_position=(9, 8, 7, 6)))
    where = {"run": [], "report": [str(source)], "probe": ["--url", "http://127.0.0.1:9"]}[command]
    line = one_line_error(cli(command, "--threshold", "0.7", "--keep-threshold", "0.6", *where, home=tmp_path), command)
    assert "--threshold (0.7)" in line and "--keep-threshold (0.6)" in line


def test_a_bad_environment_variable_is_named_as_the_variable(tmp_path: Path) -> None:
    source = tmp_path / "metrics.txt"
    source.write_text(vllm_payload(drafts=10, draft_tokens=40, accepted=30, per_position=(9, 8, 7, 6)))
    line = one_line_error(cli("report", str(source), home=tmp_path, SPEC_SIDECAR_WINDOW="a minute"), "report")
    assert "SPEC_SIDECAR_WINDOW=a minute" in line
    assert "--window" not in line


def test_status_without_a_cluster_points_at_kubeconfig_and_deployment_file(tmp_path: Path) -> None:
    line = one_line_error(cli("status", "--deployment", "vllm", home=tmp_path), "status")
    assert "--kubeconfig" in line and "--deployment-file" in line


def test_run_with_a_deployment_but_no_cluster_refuses_at_start(tmp_path: Path) -> None:
    done = cli("run", "--deployment", "vllm", "--listen", f"127.0.0.1:{free_port()}", home=tmp_path)
    line = one_line_error(done, "run")
    assert "KUBECONFIG" in line and "--deployment-file" in line


def test_an_unreachable_api_server_is_one_line_with_its_address(tmp_path: Path) -> None:
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    done = cli("status", "--deployment", "vllm", "--kubeconfig", str(kubeconfig), home=tmp_path)
    line = one_line_error(done, "status")
    assert f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}" in line
    assert "Connection refused" in line
    assert "HTTPConnectionPool" not in line and "retrying" not in done.stderr


@pytest.mark.parametrize("command", ["status", "enable", "disable", "run"])
def test_a_file_that_is_not_a_manifest_is_one_line_naming_the_flag(tmp_path: Path, command: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# spec-sidecar\n\nA sidecar.\n\n- **Measures.** it: scrapes: metrics\n")
    listen = ["--listen", f"127.0.0.1:{free_port()}"] if command == "run" else []
    line = one_line_error(cli(command, "--deployment-file", str(readme), *listen, home=tmp_path), command)
    assert f"{readme} is not YAML at line" in line and "--deployment-file" in line


@pytest.mark.parametrize("command", ["status", "enable", "disable"])
def test_a_missing_manifest_is_exit_code_2_for_every_command(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "deploy.yaml"
    line = one_line_error(cli(command, "--deployment-file", str(missing), home=tmp_path), command)
    assert f"{missing}: no such file" in line and "--deployment-file" in line
    assert not list(tmp_path.glob(".deploy.yaml*")), "nothing is left beside a file that is not there"


def test_run_on_a_port_in_use_is_one_line_and_exit_code_2(tmp_path: Path, not_vllm: str) -> None:
    taken = not_vllm.removeprefix("http://")
    line = one_line_error(cli("run", "--listen", taken, "--vllm-url", not_vllm, home=tmp_path), "run")
    assert f"--listen {taken}: " in line and "choose another port" in line


INJECT_INPUT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: vllm}
spec:
  selector: {matchLabels: {app: vllm}}
  template:
    metadata: {labels: {app: vllm}}
    spec:
      containers:
        - {name: a, image: vllm/vllm-openai:v0.32.0}
        - {name: b, image: vllm/vllm-openai:v0.32.0}
"""


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        ((), INJECT_INPUT, ["more than one container that looks like vLLM", "'a' and 'b'", "--container"]),
        ((), INJECT_INPUT.replace("vllm/vllm-openai:v0.32.0", "nginx:1.27"), ["no vLLM container", "--container"]),
        (("--container", "c"), INJECT_INPUT, ["no container named 'c'", "its containers: a, b"]),
        (("--workload", "other"), INJECT_INPUT, ["no workload named 'other'", "--workload"]),
        ((), "kind: [unclosed\n", ["stdin: not YAML", "Kubernetes YAML"]),
        (("missing.yaml",), "", ["missing.yaml: no such file", "'-' for stdin"]),
        (("--config", "treshold=0.4"), INJECT_INPUT, ["--config treshold=0.4", "setting of `spec-sidecar run`"]),
        (("--config", "threshold=high"), INJECT_INPUT, ["--config threshold=high", "number"]),
        (("--config", "deployment=x"), INJECT_INPUT, ["inject sets deployment itself"]),
    ],
)
def test_inject_refusals_are_one_line_saying_what_to_change_and_write_nothing(
    tmp_path: Path, args: tuple[str, ...], stdin: str, says: list[str]
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SPEC_SIDECAR_", "KUBE"))}
    done = subprocess.run(
        [str(ENTRY_POINT), "inject", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False,
        env={**base, "HOME": str(tmp_path)}, cwd=tmp_path,
    )  # fmt: skip
    line = one_line_error(done, "inject")
    assert [s for s in says if s not in line] == [], line
    assert done.stdout == ""  # nothing half-written into the pipe for kubectl apply
