"""HTTP requests to places a user names: builtin.http today, alert webhooks next.

A host name in the allowlist is not enough: a name can resolve to the platform's own Redis
or database, a port can be any service's, a `Host` header can point a request elsewhere,
and a second lookup at connect time can answer differently from the first (DNS rebinding).
So a request goes out only when:
- the scheme is http or https, and the URL carries no user:password;
- its host is named by the allowlist, and its port is 80 or 443 or named there with it
  (`host:port`);
- every address the host resolves to is public (not loopback, private, link-local,
  multicast or otherwise reserved), unless the allowlist names that address or a network
  holding it (`10.0.0.5`, `10.0.0.0/8`, `[::1]:8080`);
- the connection goes to an address that was checked, with no second lookup, no proxy,
  no redirect followed and no `Host` header but the URL's own.
Allowlist entries: a host name, an IP address or a network, each with an optional port.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PORTS = frozenset({80, 443})
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Allowlist:
    names: dict[str, frozenset[int]] = field(default_factory=dict)  # host name: ports besides 80, 443
    networks: tuple[tuple[Network, frozenset[int]], ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        names: dict[str, set[int]] = {}
        networks: list[tuple[Network, frozenset[int]]] = []
        for entry in entries:
            host, port = _split_entry(entry.strip())
            ports = frozenset({port}) if port else frozenset()
            try:
                networks.append((ipaddress.ip_network(host, strict=False), ports))
            except ValueError:
                names.setdefault(host.lower(), set()).update(ports)
        return cls({name: frozenset(ports) for name, ports in names.items()}, tuple(networks))

    def networks_holding(self, address: Address) -> list[frozenset[int]]:
        return [ports for network, ports in self.networks if _unmapped(address) in network]

    def check_host(self, host: str, port: int) -> None:
        literal = _address(host)
        if literal is not None:
            holding = self.networks_holding(literal)
            if not holding:
                raise PermissionError(f"address {host} is not in the allowed hosts")
            extra = frozenset().union(*holding)
        elif host in self.names:
            extra = self.names[host]
        else:
            raise PermissionError(f"host {host!r} is not in the allowed hosts")
        if port not in DEFAULT_PORTS | extra:
            raise PermissionError(
                f"port {port} of {host} is not allowed (80 and 443, or name it as host:port)"
            )

    def check_address(self, host: str, address: Address) -> None:
        if _is_public(address) or self.networks_holding(address):
            return
        raise PermissionError(
            f"{host} resolves to {address}, a non-public address the allowed hosts do not name"
        )


def _split_entry(entry: str) -> tuple[str, int | None]:
    """ "host", "host:port", "[v6]:port", "10.0.0.0/8" or a bare IPv6 address -> (host, port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if not port.isdigit():
            raise ValueError(f"allowed host {entry!r}: the port must be a number")
        return host, int(port)
    return entry, None


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _unmapped(address: Address) -> Address:
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return mapped or address


NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _wrapped_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 one carries to wherever routes it: 6to4, Teredo, NAT64 and
    the old IPv4-compatible form. ipaddress calls some of these global whatever they wrap."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    wrapped = [address.sixtofour] if address.sixtofour else []
    wrapped += list(address.teredo or ())
    if address in NAT64 or address in IPV4_COMPATIBLE:
        wrapped.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return wrapped


def _is_public(address: Address) -> bool:
    address = _unmapped(address)
    if not address.is_global or address.is_multicast:
        return False
    return all(_is_public(inner) for inner in _wrapped_ipv4(address))


@dataclass(frozen=True)
class Target:
    """A URL that passed every check, and the address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]  # all checked; tried in the resolver's order


def check(url: str, allowed: Iterable[str]) -> Target:
    """Resolve and check `url` against `allowed`; raises PermissionError where it may not go
    (nothing was sent), ValueError for a URL that is not one. No error repeats the URL,
    which may carry secrets."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in {"http", "https"}:
        raise ValueError(f"url must be http or https, got {parsed.scheme!r}")
    if parsed.username is not None or parsed.password is not None:
        raise PermissionError("url must not carry a user name or password (send credentials in a header)")
    host = (parsed.hostname or "").lower()
    if not host:
        raise ValueError("url has no host")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise ValueError("url has an invalid port") from None
    allowlist = Allowlist.parse(allowed)
    allowlist.check_host(host, port)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectionError(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in found))
    for address in addresses:
        allowlist.check_address(host, ipaddress.ip_address(address.partition("%")[0]))
    path = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
    return Target(parsed.scheme, host, port, path, tuple(addresses))


def request(
    method: str,
    url: str,
    *,
    allowed: Iterable[str],
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
    limit: int = 64 * 1024,
) -> tuple[int, dict[str, str], bytes]:
    """One request after check(); (status, headers, at most `limit` bytes of the body).
    Redirects are returned, not followed: where they lead was not checked."""
    headers = dict(headers or {})
    if any(name.strip().lower() == "host" for name in headers):
        raise PermissionError("a Host header is not allowed: the request goes to the URL's host")
    target = check(url, allowed)
    connection = _connection(target, timeout)
    try:
        connection.request(method.upper(), target.path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read(limit)
    finally:
        connection.close()


def _connection(target: Target, timeout: float) -> http.client.HTTPConnection:
    if target.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)

    # The checked addresses, not a second lookup of the name; TLS still verifies the name.
    # (http.client looks up `_create_connection` on the instance for exactly this.)
    def connect_to_checked(address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
        error: OSError | None = None
        for checked in target.addresses:
            try:
                return socket.create_connection((checked, target.port), timeout, source_address)
            except OSError as exc:
                error = exc
        raise error or OSError("no address to connect to")

    connection._create_connection = connect_to_checked  # type: ignore[attr-defined]
    return connection
