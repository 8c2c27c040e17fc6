"""deploy/ checked offline: the Dockerfile (hadolint), the Kubernetes manifests (their
schemas), the systemd unit (systemd-analyze verify), and the container's own start
command run against a real gateway process (README "Deploy")."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.processes import free_port, stop, wait_for_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent  # the venv's scripts: gateway, hadolint, kubernetes-validate


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def dockerfile_cmd() -> list[str]:
    (line,) = [x for x in (DEPLOY / "Dockerfile").read_text().splitlines() if x.startswith("CMD ")]
    cmd: list[str] = json.loads(line.removeprefix("CMD "))
    return cmd


def test_the_dockerfile_passes_hadolint_and_copies_files_that_exist() -> None:
    linted = run(str(BIN / "hadolint"), str(DEPLOY / "Dockerfile"))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim\S* AS build$", text, re.M)  # multi-stage
    assert re.search(r"^USER 10001:10001$", text, re.M)  # never root
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in sources.split():
            assert (REPO / source).exists(), source


def test_the_kubernetes_manifests_pass_their_schemas() -> None:
    manifests = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    kinds = {yaml.safe_load(Path(p).read_text())["kind"] for p in manifests}
    assert kinds == {"ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"}
    checked = run(str(BIN / "kubernetes-validate"), "--strict", *manifests)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_deployment_runs_the_image_command_and_probes_the_status_listener() -> None:
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == dockerfile_cmd()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["envFrom"] == [{"secretRef": {"name": "gateway-secrets"}}]


def test_the_configmap_holds_a_config_that_loads(tmp_path: Path) -> None:
    data = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())["data"]
    (tmp_path / "policies").mkdir()
    (tmp_path / "routes.yaml").write_text(data["routes.yaml"])
    (tmp_path / "policies" / "roles.yaml").write_text(data["roles.yaml"])
    checked = run(str(BIN / "gateway"), "check", "--config", str(tmp_path / "routes.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_runs_two_gateways_after_one_migration() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "gateway-1", "gateway-2", "balancer"} <= set(services)
    assert services["migrate"]["command"][:3] == ["gateway", "db", "upgrade"]
    for name in ("gateway-1", "gateway-2"):
        gateway = services[name]
        assert gateway["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert "GATEWAY_REDIS_URL" in gateway["environment"]
        for volume in gateway["volumes"]:
            assert (DEPLOY / volume.split(":")[0]).exists(), volume
    assert "gateway-1:8080" in (DEPLOY / "nginx.conf").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    text = (DEPLOY / "gateway.service").read_text()
    for setting in (
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/gateway",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert setting in text, setting
    # systemd-analyze checks that the program exists: point it at this checkout's.
    unit = tmp_path / "gateway.service"
    unit.write_text(text.replace("/opt/gateway/bin/gateway", str(BIN / "gateway")))
    verified = run("systemd-analyze", "verify", str(unit))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_container_start_command_serves(tmp_path: Path) -> None:
    """The Dockerfile's CMD, with the image's paths and ports moved into tmp_path."""
    port, status = free_port(), free_port()
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    config = (DEPLOY / "routes.yaml").read_text()
    config = config.replace("/var/lib/gateway", str(tmp_path)).replace(":8081", f":{status}")
    (tmp_path / "routes.yaml").write_text(config)
    cmd = dockerfile_cmd()
    assert cmd[:2] == ["gateway", "serve"]
    assert cmd[cmd.index("--config") + 1] == "/etc/gateway/routes.yaml"
    assert cmd[cmd.index("--port") + 1] == "8080"
    argv = [str(BIN / "gateway"), *cmd[1:]]
    argv[argv.index("--config") + 1] = str(tmp_path / "routes.yaml")
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    process = start_gateway_argv(argv, port, tmp_path)
    try:
        wait_for_port(status, process)
        for where, path in ((port, "/healthz"), (status, "/healthz"), (status, "/readyz")):
            with urllib.request.urlopen(f"http://127.0.0.1:{where}{path}", timeout=10) as resp:
                assert resp.status == 200, (where, path)
        # A process's own figures: its open client connections (this scrape's at least).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        (line,) = [x for x in text.splitlines() if x.startswith("gateway_connections_open ")]
        assert float(line.split()[1]) >= 1
    finally:
        stop(process)


def start_gateway_argv(argv: list[str], port: int, folder: Path) -> subprocess.Popen[bytes]:
    env_db = f"sqlite+aiosqlite:///{folder / 'gateway.db'}"
    migrated = subprocess.run(
        [argv[0], "db", "upgrade", "--config", argv[argv.index("--config") + 1]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environment(env_db),
    )
    assert migrated.returncode == 0, migrated.stderr
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(env_db)
    )
    wait_for_port(port, process)
    return process


def environment(database_url: str) -> dict[str, str]:
    return {**os.environ, "GATEWAY_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
