"""Where webhooks may go: http(s) only, and never to private, loopback, link-local or otherwise reserved
addresses (server-side request forgery) unless GENQUEUE_WEBHOOK_ALLOW_PRIVATE lists them. The check is made
when a job is submitted and again before each attempt, on the addresses the name resolves to then, since a
name can be pointed elsewhere after submission."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from functools import lru_cache
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTarget(ValueError):
    """A webhook URL that genqueue refuses to call."""


@lru_cache(maxsize=8)
def parse_allow(setting: str) -> tuple[Network, ...]:
    nets = []
    for part in setting.split(","):
        part = part.strip()
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"GENQUEUE_WEBHOOK_ALLOW_PRIVATE: {part!r} is not an IP address or network") from None
    return tuple(nets)


def _public(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_address(ip: Address, allow: Sequence[Network]) -> None:
    if _public(ip) or any(ip in net for net in allow):
        return
    raise UnsafeTarget(f"the webhook address {ip} is private, loopback, link-local or reserved")


def split(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; UnsafeTarget for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeTarget(f"the webhook URL is malformed: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeTarget("the webhook URL must be http or https")
    if not parts.hostname:
        raise UnsafeTarget("the webhook URL has no host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[Address]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_submit(url: str, allow: Sequence[Network]) -> None:
    """At submission: the scheme, and the addresses the host resolves to now. A name that does not resolve
    yet is accepted; the check before sending decides then."""
    host, port = split(url)
    ip = literal(host)
    if ip is not None:
        check_address(ip, allow)
        return
    try:
        addresses = resolve(host, port)
    except OSError:
        return
    for a in addresses:
        check_address(a, allow)


def check_send(url: str, allow: Sequence[Network]) -> None:
    """Before an attempt: every address the host resolves to must be allowed."""
    host, port = split(url)
    ip = literal(host)
    addresses = [ip] if ip is not None else []
    if ip is None:
        try:
            addresses = resolve(host, port)
        except OSError as e:
            raise ConnectionError(f"cannot resolve {host}: {e}") from None
    for a in addresses:
        check_address(a, allow)
