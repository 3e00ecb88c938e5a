from __future__ import annotations

import ipaddress

import pytest

from switchboard.edge.clientip import client_ip, forwarded_https, parse_ip

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("text", "ip"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4:8080 ", "1.2.3.4"),
        ('"[2001:db8::1]:4711"', "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("999.1.1.1", None),
    ],
)
def test_parse_ip(text: str, ip: str | None) -> None:
    parsed = parse_ip(text)
    assert (str(parsed) if parsed else None) == ip


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert client_ip("203.0.113.9", TRUSTED, x_forwarded_for=["1.1.1.1"]) == "203.0.113.9"
    assert client_ip("203.0.113.9", (), forwarded=["for=1.1.1.1"]) == "203.0.113.9"


def test_trusted_proxy_x_forwarded_for_is_read_from_the_right() -> None:
    # The client forged "6.6.6.6"; the proxy appended what it saw (198.51.100.4).
    assert (
        client_ip("10.0.0.2", TRUSTED, x_forwarded_for=["6.6.6.6, 198.51.100.4"]) == "198.51.100.4"
    )
    # Two trusted hops, header split over two lines.
    assert (
        client_ip("10.0.0.2", TRUSTED, x_forwarded_for=["6.6.6.6, 198.51.100.4", "10.1.1.1"])
        == "198.51.100.4"
    )


def test_forwarded_header_wins_over_x_forwarded_for() -> None:
    ip = client_ip(
        "10.0.0.2",
        TRUSTED,
        forwarded=['for="[2001:db8::7]:1234";proto=https, for=10.3.3.3'],
        x_forwarded_for=["9.9.9.9"],
    )
    assert ip == "2001:db8::7"


def test_garbage_hop_stops_at_the_proxy_that_reported_it() -> None:
    assert client_ip("10.0.0.2", TRUSTED, forwarded=["for=_hidden"]) == "10.0.0.2"
    assert client_ip("10.0.0.2", TRUSTED, x_forwarded_for=["1.1.1.1, garbage"]) == "10.0.0.2"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    assert client_ip("10.0.0.2", TRUSTED, x_forwarded_for=["10.9.9.9"]) == "10.9.9.9"


def test_unknown_or_unix_peer() -> None:
    assert client_ip(None, TRUSTED) == "unknown"
    assert client_ip("unix-socket", TRUSTED) == "unix-socket"


def test_https_from_scheme_or_trusted_proxy_only() -> None:
    assert forwarded_https("203.0.113.9", (), scheme="https")
    assert not forwarded_https("203.0.113.9", TRUSTED, scheme="http", x_forwarded_proto=["https"])
    assert forwarded_https("10.0.0.2", TRUSTED, scheme="http", x_forwarded_proto=["https"])
    assert not forwarded_https("10.0.0.2", TRUSTED, scheme="http", x_forwarded_proto=["http"])
    assert not forwarded_https("10.0.0.2", TRUSTED, scheme="http")
    assert forwarded_https(
        "10.0.0.2", TRUSTED, scheme="http", forwarded=["for=1.2.3.4;proto=https"]
    )
    # The nearest proxy's value counts.
    assert not forwarded_https(
        "10.0.0.2", TRUSTED, scheme="http", x_forwarded_proto=["https, http"]
    )
