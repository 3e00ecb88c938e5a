"""PyPI's own advisory data as a second source for the dependency audit.

PyPI's JSON API lists, per project, the known vulnerabilities of its *latest* release
(``GET /pypi/<name>/json``, field ``vulnerabilities``, from the same OSV records that
pip-audit asks ``api.osv.dev`` about). Where OSV cannot be reached but PyPI can (only the
package registries are open here), every locked package that is at its latest release
can still be audited for real; the others are reported as not audited, never as clean.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["PYPI_JSON_URL", "Finding", "PypiAudit", "locked_requirements", "pypi_audit"]

PYPI_JSON_URL = "https://pypi.org/pypi"
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


@dataclass(frozen=True)
class Finding:
    """One known vulnerability of one locked package version, from any source."""

    package: str
    version: str
    id: str
    """The source's preferred id (pip-audit may prefer a CVE alias to the OSV id)."""
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass
class PypiAudit:
    """What PyPI could tell about a set of pinned packages."""

    findings: list[Finding] = field(default_factory=list)
    audited: list[str] = field(default_factory=list)
    not_audited: list[str] = field(default_factory=list)
    """``name==version`` of packages PyPI has no data for at that version (not the latest
    release, or the project could not be read)."""


def locked_requirements(requirements: Path) -> list[tuple[str, str]]:
    """``(name, version)`` of every pinned line of a requirements file."""
    return _PINNED.findall(requirements.read_text())


def pypi_audit(packages: list[tuple[str, str]], base_url: str = PYPI_JSON_URL) -> PypiAudit:
    """Ask PyPI about every package (a few at a time); raise ``httpx.HTTPError`` when PyPI
    cannot be reached at all."""
    with httpx.Client(timeout=15.0) as client:
        client.get(f"{base_url}/pip/json").raise_for_status()  # reachable at all?

        def project(name: str) -> dict[str, Any] | None:
            response = client.get(f"{base_url}/{name}/json")
            return response.json() if response.status_code == 200 else None

        with ThreadPoolExecutor(max_workers=8) as pool:
            projects = list(pool.map(project, [name for name, _ in packages]))
    audit = PypiAudit()
    for (name, version), data in zip(packages, projects, strict=True):
        info = data.get("info") if data else None
        latest = info.get("version") if isinstance(info, dict) else None
        if latest != version:
            audit.not_audited.append(f"{name}=={version}")
            continue
        audit.audited.append(f"{name}=={version}")
        for vuln in (data or {}).get("vulnerabilities") or []:
            if vuln.get("withdrawn"):
                continue
            audit.findings.append(
                Finding(name, version, str(vuln["id"]), tuple(vuln.get("aliases") or ()))
            )
    return audit
