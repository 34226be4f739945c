"""This machine and a volunteer account, from the volunteer's side: `volunteer_app.account` and
`commonweights volunteer link` against a real coordinator process, and answers that are not what a
coordinator sends."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest
from websockets.sync.client import connect

from protocol.messages import Welcome, decode, encode
from tests.coordinator.test_gateway import hello
from tests.support.live import REPO, LiveCoordinator, live_coordinator
from volunteer_app.account import MAX_ANSWER_BYTES, AccountError, link_machine, machine_status
from volunteer_app.credentials import CredentialStore


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Iterator[LiveCoordinator]:
    with live_coordinator(tmp_path_factory.mktemp("account"), small_dataset) as live:
        yield live


def register(server: LiveCoordinator, config_dir: Path) -> str:
    """Connect once as a new volunteer and keep its token, as the app's first start does; its id."""
    with connect(server.ws) as ws:
        ws.send(encode(hello()))
        welcome = decode(ws.recv(timeout=30), direction="to_client")
    assert isinstance(welcome, Welcome) and welcome.token is not None
    CredentialStore(config_dir).save(server.ws, welcome.token, volunteer_id=welcome.volunteer_id)
    return welcome.volunteer_id


def account_with_code(server: LiveCoordinator, name: str) -> tuple[str, str]:
    status, created = server.call("POST", "/api/accounts", body={"name": name})
    assert status == 201, created
    status, code = server.call("POST", "/api/account/link-code", token=created["key"])
    assert status == 201, code
    return str(created["key"]), str(code["code"])


def test_a_machine_links_to_an_account_and_reads_its_pause(server: LiveCoordinator, tmp_path: Path) -> None:
    with pytest.raises(AccountError) as never:
        link_machine(server.url, "K7QX-M2PD", config_dir=tmp_path)
    assert never.value.code == "not_registered" and "start it once" in str(never.value)
    volunteer_id = register(server, tmp_path)
    assert machine_status(server.url, config_dir=tmp_path).account_name is None
    with pytest.raises(AccountError) as wrong:
        link_machine(server.url, "AAAA-AAAA", config_dir=tmp_path)
    assert wrong.value.code == "not_found" and "expired" in str(wrong.value)

    key, code = account_with_code(server, "alice")
    linked = link_machine(server.url, code, config_dir=tmp_path)  # the http URL the app's settings hold
    assert (linked.volunteer_id, linked.account_name) == (volunteer_id, "alice")
    status = server.call("POST", f"/api/account/machines/{volunteer_id}/pause", token=key)[0]
    assert status == 200
    now = machine_status(server.ws, config_dir=tmp_path)  # or the ws URL: the same coordinator
    assert (now.account_name, now.paused) == ("alice", True)


def test_the_cli_links_with_a_code_and_says_why_when_it_cannot(server: LiveCoordinator, tmp_path: Path) -> None:
    volunteer_id = register(server, tmp_path)
    _, code = account_with_code(server, "bob")

    def link(code: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "commonweights", "volunteer", "link", code]
        command += ["--coordinator", server.ws, "--config-dir", str(tmp_path)]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    done = link(code.lower())
    assert done.returncode == 0 and "'bob'" in done.stdout and volunteer_id in done.stdout, done.stderr
    again = link(code)
    assert again.returncode == 2 and "not_found" in again.stderr


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler], tmp_path: Path) -> Iterator[str]:
    """An HTTP server on loopback answering with `handler`, and a machine token saved for it; its URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        CredentialStore(tmp_path).save(url.replace("http", "ws", 1) + "/ws", "cw-vol-token")
        yield url
    finally:
        httpd.shutdown()
        httpd.server_close()


class Hostile(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 10, "not a JSON object"),
        (b'{"volunteer_id": "v", "name": "n", "paused": "no", "account": null}', "valid paused"),
        (b'{"volunteer_id": "v", "name": "n", "paused": false, "account": 7}', "malformed account"),
        (b" " * (MAX_ANSWER_BYTES + 10), f"over {MAX_ANSWER_BYTES} bytes"),
    ],
)
def test_an_answer_that_is_not_a_coordinators_is_refused_with_a_reason(tmp_path: Path, body: bytes, why: str) -> None:
    with serving(type("Answer", (Hostile,), {"body": body}), tmp_path) as url:
        with pytest.raises(AccountError, match=why) as refused:
            machine_status(url, config_dir=tmp_path)
        assert refused.value.code == "bad_answer"


class Redirect(http.server.BaseHTTPRequestHandler):
    seen_tokens: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Redirect.seen_tokens.append(self.headers.get("Authorization", ""))
        self.send_response(302)
        self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/elsewhere")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


def test_a_redirect_is_refused_rather_than_followed_with_the_token(tmp_path: Path) -> None:
    with serving(Redirect, tmp_path) as url:
        with pytest.raises(AccountError) as refused:
            machine_status(url, config_dir=tmp_path)
        assert refused.value.code == "http_302"
        assert Redirect.seen_tokens == ["Bearer cw-vol-token"]  # asked once, never at the new location


def test_a_server_that_does_not_speak_http_is_unreachable_not_a_crash(tmp_path: Path) -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        client, _ = listener.accept()
        client.recv(4096)
        client.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        client.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        CredentialStore(tmp_path).save(url.replace("http", "ws", 1) + "/ws", "cw-vol-token")
        with pytest.raises(AccountError) as refused:
            machine_status(url, config_dir=tmp_path)
        assert refused.value.code == "unreachable"
    finally:
        listener.close()
