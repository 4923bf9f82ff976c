"""Which image URLs may be fetched: their syntax, and the addresses their host may lead to.

- only http and https, with a host, no credentials, no whitespace or control characters, at
  most MAX_URL_CHARS characters (`check_url_syntax`, which the API calls too, so a bad URL is
  a 400 there and never reaches a worker);
- the host is resolved and EVERY address it resolves to is checked before any connection is
  made (`resolve_checked`): loopback, private, link-local (169.254.0.0/16, cloud metadata),
  carrier-grade NAT, multicast, reserved and unspecified addresses are refused, as are IPv6
  forms that embed such an IPv4 address (mapped, 6to4, Teredo, NAT64), unless
  MMSEARCH_URL_ALLOW_PRIVATE allows them (`true`: all; or a comma list of CIDRs such as
  `127.0.0.0/8`, which allows those networks only).
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Any, Union
from urllib.parse import urlsplit

from shared.encoding.source_errors import SourceError
from shared.runtime.config import Settings

MAX_URL_CHARS = 8192

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def _embedded_ipv4(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that an IPv6 address leads to (mapped, 6to4, Teredo, NAT64)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    found = [a for a in (addr.ipv4_mapped, addr.sixtofour) if a is not None]
    if addr.teredo:
        found.extend(addr.teredo)
    if any(addr in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def _is_public(addr: IPAddress) -> bool:
    return (addr.is_global and not addr.is_multicast and not addr.is_reserved
            and not addr.is_unspecified and not (addr.version == 4 and addr in _CGNAT))


def _private_allowed(addr: IPAddress, settings: Settings) -> bool:
    if settings.url_allow_private:
        return True
    return any(addr in ipaddress.ip_network(net) for net in settings.url_allow_networks)


def address_allowed(addr: IPAddress | str, settings: Settings) -> bool:
    """May a URL image be fetched from this address? Public unicast addresses always; any
    other only as MMSEARCH_URL_ALLOW_PRIVATE allows. An IPv6 address is judged with every
    IPv4 address it embeds (an IPv4-mapped one as that IPv4 address alone)."""
    addr = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return all(_is_public(a) or _private_allowed(a, settings) for a in (addr, *_embedded_ipv4(addr)))


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally (`10.0.0.1`, `::1`), else None."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def check_url_syntax(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL; SourceError("forbidden_url") otherwise.

    The API calls this too, so a bad URL is a 400 there and never reaches a worker."""
    if len(url) > MAX_URL_CHARS:
        raise SourceError("forbidden_url", f"the URL is longer than {MAX_URL_CHARS} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise SourceError("forbidden_url", "the URL holds whitespace or control characters")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise SourceError("forbidden_url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise SourceError("forbidden_url", "only http and https URLs with a host are allowed")
    if parts.username is not None or parts.password is not None:
        raise SourceError("forbidden_url", "URLs with credentials (user@host) are not allowed")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def resolve_checked(host: str, port: int, settings: Settings) -> list[tuple[int, tuple[Any, ...]]]:
    """(family, sockaddr) of every address of `host`, each checked against the policy: one
    forbidden address refuses the whole host. Nothing is connected to here."""
    literal = literal_address(host)
    if literal is not None:
        candidates = [literal]
        infos = [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET,
                  (str(literal), port) if literal.version == 4 else (str(literal), port, 0, 0))]
    else:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError, ValueError) as exc:
            raise SourceError("fetch_failed", f"cannot resolve host {host[:100]!r}") from exc
        infos = [(family, sockaddr) for family, _, _, _, sockaddr in found
                 if family in (socket.AF_INET, socket.AF_INET6)]
        candidates = [ipaddress.ip_address(sockaddr[0].split("%", 1)[0]) for _, sockaddr in infos]
        if not infos:
            raise SourceError("fetch_failed", f"host {host[:100]!r} has no IP address")
    for addr in candidates:
        if not address_allowed(addr, settings):
            raise SourceError("forbidden_url", f"{host[:100]} resolves to a non-public address ({addr}); "
                                               "such URLs are refused")
    return infos
