"""Where a volunteer's connection comes from: the client's address, and the network prefix that
stands for whoever controls that address.

    >>> network_prefix("203.0.113.77")
    '203.0.113.0/24'
    >>> network_prefix("2001:db8:1234:5678::1")
    '2001:db8:1234::/48'
    >>> policy = SourcePolicy(trusted_proxies=parse_networks(["127.0.0.1"]))
    >>> policy.client_ip("127.0.0.1", "198.51.100.7, 192.0.2.10")  # what the proxy appended
    '192.0.2.10'
    >>> policy.source("127.0.0.1", "192.0.2.10")
    '192.0.2.0/24'

One person easily holds many addresses of one network (a home's IPv6 /64s under its /48, a
provider's pool of IPv4 addresses), so registration limits and bans apply to the prefix, not to the
address. `X-Forwarded-For` is believed only from the `trusted_proxies`: anyone else could write any
address there.

Loopback is exempt from limits and source bans unless `limit_loopback` is set: a connection from
the coordinator's own machine is the admin's (the demo, benchmarks), or a reverse proxy that was not
named with `--trusted-proxy` — then every volunteer would share one prefix, and a single ban would
lock all of them out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["IPNetwork", "SourcePolicy", "network_prefix", "parse_networks"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# A forwarded chain longer than this is walked only this far from the right (the header is the client's).
MAX_FORWARDED_HOPS = 32


def _address(text: str) -> IPAddress:
    """An address from a socket or a header: IPv4-mapped IPv6 as IPv4, without an IPv6 zone."""
    address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def network_prefix(ip: str, v4_bits: int = 24, v6_bits: int = 48) -> str:
    """The network `ip` lies in, as "203.0.113.0/24" or "2001:db8:1234::/48"; ValueError if not an address."""
    address = _address(ip)
    bits = v4_bits if address.version == 4 else v6_bits
    return str(ipaddress.ip_network((address, bits), strict=False))


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Addresses or networks ("10.0.0.1", "10.0.0.0/8", "::1"); ValueError names the first bad one."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.1 or 10.0.0.0/8)") from None
    return tuple(networks)


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


@dataclass(frozen=True)
class SourcePolicy:
    """How a connection's source is told: prefix lengths, the proxies whose forwarding is believed,
    and whether loopback is limited like any other source."""

    v4_bits: int = 24
    v6_bits: int = 48
    trusted_proxies: tuple[IPNetwork, ...] = ()
    limit_loopback: bool = False

    def __post_init__(self) -> None:
        if not 8 <= self.v4_bits <= 32:
            raise ValueError(f"the IPv4 source prefix must be 8 to 32 bits, got {self.v4_bits}")
        if not 16 <= self.v6_bits <= 128:
            raise ValueError(f"the IPv6 source prefix must be 16 to 128 bits, got {self.v6_bits}")

    def client_ip(self, remote: str | None, forwarded_for: str | None = None) -> str | None:
        """The client's address: the peer's, or — when the peer is a trusted proxy — the rightmost
        address in X-Forwarded-For that is not a trusted proxy itself. None when unknown (a Unix socket)."""
        try:
            peer = _address(remote) if remote else None
        except ValueError:
            return None
        if peer is None or not forwarded_for or not _within(peer, self.trusted_proxies):
            return str(peer) if peer is not None else None
        client = peer
        for hop in reversed(forwarded_for.split(",")[-MAX_FORWARDED_HOPS:]):
            try:
                address = _address(hop)
            except ValueError:
                break  # a trusted proxy forwarded something that is not an address: keep the last good hop
            client = address
            if not _within(address, self.trusted_proxies):
                break
        return str(client)

    def source(self, remote: str | None, forwarded_for: str | None = None) -> str:
        """The client's network prefix ("203.0.113.0/24"), or "" when its address is unknown."""
        ip = self.client_ip(remote, forwarded_for)
        return network_prefix(ip, self.v4_bits, self.v6_bits) if ip is not None else ""

    def exempt(self, source: str) -> bool:
        """Whether limits and source bans skip this prefix: an unknown source, and loopback unless
        `limit_loopback`."""
        if not source:
            return True
        if self.limit_loopback:
            return False
        try:
            network = ipaddress.ip_network(source, strict=False)
        except ValueError:
            return True
        return any(network.version == n.version and network.subnet_of(n) for n in LOOPBACK)  # type: ignore[arg-type]
