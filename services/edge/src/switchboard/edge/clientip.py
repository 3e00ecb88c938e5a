"""Who the client is and whether it spoke HTTPS, believing forwarding headers only from
trusted proxies.

The TCP peer is the client unless it is in ``EDGE_TRUSTED_PROXIES``. A trusted peer's
``Forwarded`` header (RFC 7239; or, when there is none, ``X-Forwarded-For``) is read from
right to left: each hop is the address the hop after it saw; the first address that is not
itself a trusted proxy is the client. A hop that is not an IP address (``unknown``,
``_hidden``, garbage) ends the walk: the proxy that reported it is taken as the client,
never a value a client could have forged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from switchboard.edge.settings import Network

__all__ = ["client_ip", "forwarded_https", "is_trusted", "parse_ip"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> Address | None:
    """The IP in a forwarding header element (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``,
    ``"[2001:db8::1]"``), IPv4-mapped IPv6 unwrapped; ``None`` if it is not one."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address | None, trusted: Sequence[Network]) -> bool:
    """True when ``address`` is inside one of the ``trusted`` networks."""
    return address is not None and any(address in network for network in trusted)


def _forwarded_elements(forwarded: Sequence[str]) -> list[dict[str, str]]:
    """RFC 7239 header lines as a list of ``{parameter: value}``, left to right."""
    elements: list[dict[str, str]] = []
    for line in forwarded:
        for element in line.split(","):
            pairs: dict[str, str] = {}
            for pair in element.split(";"):
                name, sep, value = pair.partition("=")
                if sep:
                    pairs[name.strip().lower()] = value.strip().strip('"')
            elements.append(pairs)
    return elements


def _hops(forwarded: Sequence[str], x_forwarded_for: Sequence[str]) -> list[str]:
    if forwarded:
        return [element.get("for", "") for element in _forwarded_elements(forwarded)]
    return [hop for line in x_forwarded_for for hop in line.split(",")]


def client_ip(
    peer: str | None,
    trusted: Sequence[Network],
    *,
    forwarded: Sequence[str] = (),
    x_forwarded_for: Sequence[str] = (),
) -> str:
    """The client's address as text (``"unknown"`` when the server does not know the peer)."""
    current = parse_ip(peer or "")
    if current is None:
        return peer or "unknown"
    for hop in reversed(_hops(forwarded, x_forwarded_for)):
        if not is_trusted(current, trusted):
            break
        address = parse_ip(hop)
        if address is None:
            break
        current = address
    return str(current)


def forwarded_https(
    peer: str | None,
    trusted: Sequence[Network],
    *,
    scheme: str,
    forwarded: Sequence[str] = (),
    x_forwarded_proto: Sequence[str] = (),
) -> bool:
    """Whether the client used HTTPS: the server's own scheme, or the nearest trusted proxy's
    ``Forwarded: proto=`` / ``X-Forwarded-Proto`` (its last value)."""
    if scheme in ("https", "wss"):
        return True
    if not is_trusted(parse_ip(peer or ""), trusted):
        return False
    protos = [element["proto"] for element in _forwarded_elements(forwarded) if "proto" in element]
    if not protos:
        protos = [p.strip() for line in x_forwarded_proto for p in line.split(",") if p.strip()]
    return bool(protos) and protos[-1].lower() == "https"
