"""An OSV vulnerability service on loopback: the dependency audit, tested without internet.

It answers the parts of the OSV API (https://google.github.io/osv.dev/api/) that the audit
tools call, as observed from the tools themselves:

- ``POST /v1/query`` with ``{"package": {"name", "ecosystem"}, "version"}``: ``{"vulns":
  [full records]}``, or ``{}`` when none applies. pip-audit's ``osv`` service sends one per
  package (``--osv-url`` is this endpoint's full URL).
- ``POST /v1/querybatch`` with ``{"queries": [query, ...]}``: ``{"results": [{"vulns":
  [{"id", "modified"}]} or {}, ...]}``, one result per query in order. ``uv audit`` sends
  one (``--service-url`` is the server's root), then fetches each id it got:
- ``GET /v1/vulns/{id}``: the full record; 404 ``{"code": 5, "message": "Bug not found."}``.

Vulnerabilities are OSV records (:func:`vulnerability` makes one). A record applies to a
package version when one of its ``affected`` entries names the package in the PyPI
ecosystem (names compared after PEP 503 normalization) and lists the version in
``versions`` or within an ``ECOSYSTEM`` range (``introduced`` ≤ version < ``fixed``).
Every request is kept in :attr:`OsvEmulator.requests`.
"""

from __future__ import annotations

import re
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from packaging.version import InvalidVersion, Version

from tests.support.jsonserver import serving_json

__all__ = ["OsvEmulator", "OsvRequest", "canonical_name", "vulnerability"]

Record = dict[str, Any]


def canonical_name(name: str) -> str:
    """PEP 503 normalization: ``Foo_Bar.baz`` and ``foo-bar-baz`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def vulnerability(
    vuln_id: str,
    package: str,
    version: str,
    *,
    fixed: str | None = None,
    aliases: tuple[str, ...] = (),
    summary: str = "A made-up vulnerability, for testing the audit gate",
) -> Record:
    """An OSV record saying that ``package`` ``version`` is affected (fixed in ``fixed``)."""
    events: list[dict[str, str]] = [{"introduced": "0"}]
    if fixed is not None:
        events.append({"fixed": fixed})
    return {
        "schema_version": "1.6.0",
        "id": vuln_id,
        "modified": "2026-01-01T00:00:00Z",
        "published": "2026-01-01T00:00:00Z",
        "aliases": list(aliases),
        "summary": summary,
        "details": summary,
        "affected": [
            {
                "package": {"name": package, "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
                "versions": [version],
            }
        ],
    }


def _in_range(version: str, events: list[dict[str, str]]) -> bool:
    try:
        wanted = Version(version)
        introduced = [Version(e["introduced"]) for e in events if e.get("introduced", "0") != "0"]
        fixed = [Version(e["fixed"]) for e in events if "fixed" in e]
    except InvalidVersion:
        return False
    after_start = all(wanted >= start for start in introduced)
    return after_start and all(wanted < end for end in fixed)


def _applies(record: Record, name: str, version: str) -> bool:
    for affected in record.get("affected", []):
        package = affected.get("package", {})
        if package.get("ecosystem") != "PyPI" or canonical_name(package.get("name", "")) != name:
            continue
        if version in affected.get("versions", []):
            return True
        for span in affected.get("ranges", []):
            if span.get("type") == "ECOSYSTEM" and _in_range(version, span.get("events", [])):
                return True
    return False


@dataclass(frozen=True)
class OsvRequest:
    """One request as the emulator received it."""

    method: str
    path: str
    body: Any


@dataclass
class OsvEmulator:
    """The service; a context manager that serves it on a free loopback port."""

    records: list[Record] = field(default_factory=list)
    requests: list[OsvRequest] = field(default_factory=list)
    _address: str | None = None
    _stack: ExitStack = field(default_factory=ExitStack)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:PORT`` (``uv audit --service-url``);
        it stays known after the server stopped (then nothing listens there)."""
        if self._address is None:
            raise RuntimeError("the emulator was never started")
        return self._address

    def matching(self, package: dict[str, Any], version: str) -> list[Record]:
        if package.get("ecosystem") != "PyPI":
            return []
        name = canonical_name(str(package.get("name", "")))
        return [r for r in self.records if _applies(r, name, str(version))]

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """The status and JSON body for one request."""
        with self._lock:
            self.requests.append(OsvRequest(method, path, body))
        if method == "POST" and path == "/v1/query" and isinstance(body, dict):
            found = self.matching(body.get("package", {}), body.get("version", ""))
            return 200, {"vulns": found} if found else {}
        if method == "POST" and path == "/v1/querybatch" and isinstance(body, dict):
            results = []
            for query in body.get("queries", []):
                found = self.matching(query.get("package", {}), query.get("version", ""))
                brief = [{"id": r["id"], "modified": r["modified"]} for r in found]
                results.append({"vulns": brief} if brief else {})
            return 200, {"results": results}
        if method == "GET" and path.startswith("/v1/vulns/"):
            wanted = path.removeprefix("/v1/vulns/")
            for record in self.records:
                if record["id"] == wanted:
                    return 200, record
            return 404, {"code": 5, "message": "Bug not found."}
        return 404, {"code": 5, "message": "Not Found"}

    def __enter__(self) -> Self:
        self._address = self._stack.enter_context(serving_json(self.answer))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()
