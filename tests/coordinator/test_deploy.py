"""The deployment recipe in deploy/ agrees with itself and with the code: the compose file's replicas,
HAProxy's servers, the Dockerfile's packages; HAProxy accepts its configuration. (Docker itself isn't
here; the same topology runs as processes in tests/integration/test_replicas.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.servers import DEPLOY_HAPROXY, LoadBalancer

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _compose() -> dict[str, object]:
    yaml = pytest.importorskip("yaml")
    loaded: dict[str, object] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_every_coordinator_in_the_compose_file_is_a_replica_haproxy_balances() -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    coordinators = sorted(name for name in services if name.startswith("coordinator"))
    assert len(coordinators) == 3
    for name in coordinators:
        args = services[name]["command"]
        flags = dict(zip(args[::2], args[1::2], strict=True))
        assert flags["--replica-url"] == f"http://{name}:8470"  # how the others reach it
        assert flags["--database"].startswith("postgresql://") and flags["--blobs"].startswith("s3://")
        assert "password" not in flags["--database"] and "@" in flags["--database"]  # PGPASSWORD, not the URL
        assert services[name]["environment"]["AWS_ENDPOINT_URL"] == "http://seaweedfs:8333"
    balanced = re.findall(r"^\s*server (\S+) (\S+):8470", DEPLOY_HAPROXY.read_text(), re.MULTILINE)
    assert sorted(name for name, _ in balanced) == coordinators
    assert all(name == host for name, host in balanced)
    assert services["haproxy"]["ports"] == ["8470:8470"]


def test_the_load_balancer_refuses_replica_routes_and_checks_health() -> None:
    config = DEPLOY_HAPROXY.read_text()
    assert re.search(r"http-request deny .*if \{ path,url_dec -m beg /internal/ \}", config)
    assert "option httpchk GET /api/health" in config


def test_the_image_holds_every_package_the_command_line_imports_and_a_cpu_torch() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.MULTILINE))
    assert {"protocol", "training", "coordinator", "volunteer_app", "benchmarks", "commonweights"} <= copied
    assert re.search(r'pip install "torch==2\.13\.0" --index-url \S+/whl/cpu', dockerfile)
    assert '".[scale]"' in dockerfile
    assert 'ENTRYPOINT ["commonweights", "coordinator", "serve"' in dockerfile


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="HAProxy is not installed (apt-get install haproxy)")
@pytest.mark.parametrize("which", ["deploy", "loopback"])
def test_haproxy_accepts_the_configuration(which: str, tmp_path: Path) -> None:
    path = DEPLOY_HAPROXY
    if which == "loopback":  # what the tests and benchmarks run: the same file, pointed at local replicas
        path = tmp_path / "haproxy.cfg"
        path.write_text(LoadBalancer.configuration(18470, {"a": 18471, "b": 18472}))
    checked = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
