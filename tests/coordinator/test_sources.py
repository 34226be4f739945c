"""Where a connection comes from: addresses, network prefixes, forwarded headers, and what the
coordinator records of them for each volunteer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from coordinator.app import create_app
from coordinator.appkeys import SERVICE
from coordinator.gateway import SESSIONS
from coordinator.local import LocalCoordinator, start_coordinator, stop
from coordinator.service import CoordinatorConfig
from coordinator.sources import SourcePolicy, network_prefix, parse_networks
from protocol.messages import ErrorMessage, Welcome, decode, encode
from tests.coordinator.test_gateway import hello
from tests.support.live import REPO, poll
from volunteer_app.credentials import CredentialStore

# --- Prefixes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip, v4_bits, v6_bits, prefix",
    [
        ("203.0.113.77", 24, 48, "203.0.113.0/24"),
        ("203.0.113.77", 32, 48, "203.0.113.77/32"),
        ("203.0.113.77", 16, 48, "203.0.0.0/16"),
        ("2001:db8:1234:5678::1", 24, 48, "2001:db8:1234::/48"),
        ("2001:db8:1234:5678::1", 24, 64, "2001:db8:1234:5678::/64"),
        ("::ffff:198.51.100.9", 24, 48, "198.51.100.0/24"),  # an IPv4 client on a dual-stack socket
        ("fe80::1%eth0", 24, 48, "fe80::/48"),
    ],
)
def test_network_prefix_is_the_network_of_the_address(ip: str, v4_bits: int, v6_bits: int, prefix: str) -> None:
    assert network_prefix(ip, v4_bits, v6_bits) == prefix


@pytest.mark.parametrize("text", ["", "localhost", "300.1.1.1", "1.2.3", "::g"])
def test_network_prefix_refuses_what_is_not_an_address(text: str) -> None:
    with pytest.raises(ValueError):
        network_prefix(text)


def test_prefix_lengths_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        SourcePolicy(v4_bits=33)
    with pytest.raises(ValueError, match="IPv6"):
        SourcePolicy(v6_bits=8)


def test_parse_networks_names_the_bad_entry() -> None:
    assert [str(n) for n in parse_networks(["10.0.0.1", "10.1.0.0/16", "::1"])] == [
        "10.0.0.1/32",
        "10.1.0.0/16",
        "::1/128",
    ]
    with pytest.raises(ValueError, match=r"'proxy\.example'"):
        parse_networks(["10.0.0.1", "proxy.example"])


# --- Forwarded addresses -------------------------------------------------------------------------------


def test_x_forwarded_for_is_ignored_from_a_peer_that_is_not_a_trusted_proxy() -> None:
    policy = SourcePolicy(trusted_proxies=parse_networks(["10.0.0.1"]))
    assert policy.client_ip("192.0.2.50", "198.51.100.7") == "192.0.2.50"
    assert SourcePolicy().client_ip("10.0.0.1", "198.51.100.7") == "10.0.0.1"


def test_behind_trusted_proxies_the_client_is_the_rightmost_untrusted_hop() -> None:
    policy = SourcePolicy(trusted_proxies=parse_networks(["10.0.0.0/8"]))
    # The client forged the first entry; the edge proxy appended the real address; an inner proxy its own.
    assert policy.client_ip("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.9") == "198.51.100.7"
    assert policy.source("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.9") == "198.51.100.0/24"
    # Only proxies in the chain: the leftmost one is the best we know.
    assert policy.client_ip("10.0.0.1", "10.0.0.7, 10.0.0.9") == "10.0.0.7"
    # A proxy that forwarded garbage: the last good hop stands.
    assert policy.client_ip("10.0.0.1", "198.51.100.7, not-an-ip") == "10.0.0.1"
    assert policy.client_ip("10.0.0.1", "") == "10.0.0.1"


def test_an_unknown_peer_has_no_source_and_is_exempt() -> None:
    policy = SourcePolicy()
    assert policy.client_ip(None) is None and policy.source(None) == ""
    assert policy.exempt("")


def test_loopback_is_exempt_unless_limited() -> None:
    assert SourcePolicy().exempt("127.0.0.0/24") and SourcePolicy().exempt("::1/128")
    assert not SourcePolicy().exempt("203.0.113.0/24")
    limited = SourcePolicy(v4_bits=32, limit_loopback=True)
    assert not limited.exempt(limited.source("127.0.0.2")) and not limited.exempt("::1/128")


# --- What the coordinator records ----------------------------------------------------------------------


def policy_server(tmp_path: Path, small_dataset: Path, policy: SourcePolicy) -> TestServer:
    config = CoordinatorConfig(data_dir=tmp_path / "c", datasets={"small": small_dataset}, sources=policy)
    return TestServer(create_app(config), host="127.0.0.1")


@pytest.fixture
async def per_address(tmp_path: Path, small_dataset: Path) -> AsyncIterator[TestServer]:
    """A coordinator on loopback where each 127.0.0.N is its own /32 source."""
    server = policy_server(tmp_path, small_dataset, SourcePolicy(v4_bits=32))
    await server.start_server()
    yield server
    await server.close()


async def say_hello(
    server: TestServer, *, local: str = "127.0.0.1", token: str | None = None, headers: dict[str, str] | None = None
) -> tuple[Welcome, str]:
    """Hello from `local`: (welcome, the session's source as the gateway holds it while connected)."""
    connector = aiohttp.TCPConnector(local_addr=(local, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.ws_connect(server.make_url("/ws"), headers=headers) as ws,
    ):
        await ws.send_bytes(encode(hello(token=token)))
        reply = decode((await ws.receive(timeout=30)).data, direction="to_client")
        assert isinstance(reply, Welcome), reply
        session = server.app[SESSIONS].get(reply.volunteer_id)
        assert session is not None
        return reply, session.source


async def test_a_volunteer_keeps_the_prefix_it_registered_from_and_the_one_it_last_came_from(
    per_address: TestServer,
) -> None:
    welcome, source = await say_hello(per_address, local="127.0.0.2")
    assert source == "127.0.0.2/32"
    store = per_address.app[SERVICE].store
    row = store.volunteer(welcome.volunteer_id)
    assert row is not None and (row.source, row.last_source) == ("127.0.0.2/32", "127.0.0.2/32")

    _, source = await say_hello(per_address, local="127.0.0.3", token=welcome.token)
    assert source == "127.0.0.3/32"
    row = store.volunteer(welcome.volunteer_id)
    assert row is not None and (row.source, row.last_source) == ("127.0.0.2/32", "127.0.0.3/32")


async def test_a_forged_x_forwarded_for_changes_nothing_without_a_trusted_proxy(per_address: TestServer) -> None:
    _, source = await say_hello(per_address, local="127.0.0.4", headers={"X-Forwarded-For": "198.51.100.7"})
    assert source == "127.0.0.4/32"


async def test_behind_a_trusted_proxy_the_forwarded_address_is_the_source(tmp_path: Path, small_dataset: Path) -> None:
    server = policy_server(tmp_path, small_dataset, SourcePolicy(trusted_proxies=parse_networks(["127.0.0.1"])))
    await server.start_server()
    try:
        welcome, source = await say_hello(server, headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.7"})
        assert source == "198.51.100.0/24"
        row = server.app[SERVICE].store.volunteer(welcome.volunteer_id)
        assert row is not None and row.source == "198.51.100.0/24"
    finally:
        await server.close()


# --- Bans that hold, with real processes --------------------------------------------------------------


@pytest.fixture
def per_address_process(tmp_path: Path, small_dataset: Path) -> Iterator[LocalCoordinator]:
    """`coordinator serve` where each 127.0.0.N is its own source and loopback is limited like any other."""
    log = tmp_path / "coordinator.log"
    args = ["--limit-loopback", "--source-prefix-v4", "32"]
    try:
        coordinator = start_coordinator(tmp_path / "c", datasets={"stdlib": small_dataset}, log=log, extra_args=args)
    except (RuntimeError, TimeoutError) as error:
        raise AssertionError(f"{error}:\n{log.read_text(errors='replace')[-4000:]}") from error
    try:
        yield coordinator
    finally:
        stop(coordinator.process)
        assert "Traceback" not in log.read_text(errors="replace")


def volunteer(coordinator: LocalCoordinator, home: Path, address: str) -> subprocess.Popen[bytes]:
    """`commonweights volunteer run` from `address`, as a fresh install under `home`."""
    dirs = [f"--{kind}-dir={home / kind}" for kind in ("config", "cache", "data")]
    return subprocess.Popen(
        [sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", coordinator.ws_url,
         "--bind-address", address, "--threads", "1", "--quiet", *dirs],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def registered(coordinator: LocalCoordinator, home: Path, process: subprocess.Popen[bytes]) -> str:
    """The volunteer id a volunteer process registered under, once it has; then the process is stopped."""
    store = CredentialStore(home / "config")

    def volunteer_id() -> str | None:
        assert process.poll() is None, "the volunteer exited before it registered"
        found = store.get(coordinator.ws_url)
        return found.volunteer_id if found else None

    try:
        return poll("the volunteer's registration", volunteer_id, timeout=90)
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0].decode(errors="replace")
        assert process.returncode == 0, output


def test_a_ban_holds_against_registering_again_from_the_same_source_but_not_from_another(
    per_address_process: LocalCoordinator, tmp_path: Path
) -> None:
    coordinator = per_address_process
    mallory = registered(coordinator, tmp_path / "a", volunteer(coordinator, tmp_path / "a", "127.0.0.2"))
    coordinator.api.ban(mallory)

    # A fresh install on the same network is refused for good: the app stops and says why.
    again = volunteer(coordinator, tmp_path / "b", "127.0.0.2")
    output = again.communicate(timeout=90)[0].decode(errors="replace")
    assert again.returncode == 1, output
    assert "banned" in output and "127.0.0.2/32" in output, output
    assert CredentialStore(tmp_path / "b" / "config").get(coordinator.ws_url) is None

    # Another network is not.
    other = registered(coordinator, tmp_path / "c", volunteer(coordinator, tmp_path / "c", "127.0.0.3"))
    assert other != mallory

    # Lifting the ban lifts it for the network too.
    coordinator.api.unban(mallory)
    assert isinstance(asyncio.run(first_reply(coordinator.ws_url, "127.0.0.2")), Welcome)


async def first_reply(url: str, local: str) -> object:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0))) as client,
        client.ws_connect(url) as ws,
    ):
        await ws.send_bytes(encode(hello()))
        reply = decode((await ws.receive(timeout=30)).data, direction="to_client")
        assert isinstance(reply, Welcome | ErrorMessage)
        return reply
