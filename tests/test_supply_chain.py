"""Supply chain: no locked dependency has a known vulnerability without a reviewed,
unexpired exception in ``deploy/audit-exceptions.toml``.

The audit tool is pip-audit (pinned in the dev group, so CI runs the version in uv.lock)
over ``uv export --locked --all-groups`` (every locked package of every group, with hashes;
our own workspace packages left out), asking OSV's API (``api.osv.dev``) about each one.
The gate on top of it is ours: every finding must be covered by an exception naming its id
(or an alias) and its package, and an exception past its ``expires`` date fails by itself.

"Could not ask" is never "nothing found". When OSV cannot be reached, the audit falls back
to PyPI's own advisories (``tests/support/pypi_advisories.py``: the JSON API lists the
known vulnerabilities of each project's latest release), which audits for real every
locked package at its latest release; findings fail as above. The packages no source could
answer for make a second test *skip*, naming them, with the reason (``pytest -ra``, which
our addopts turn on, prints it in the summary). With ``SWITCHBOARD_AUDIT=required`` (``make
audit``; a release pipeline with internet) that case *fails*.

Without internet the gate itself is proven against a local OSV service
(``tests/support/osv_emulator.py``) that reports a made-up vulnerability for a locked
package: the audit fails; with the matching exception it passes; with that exception
expired it fails again. That runs with pip-audit and with ``uv audit`` (uv's own auditor,
when this uv has it: it reads uv.lock itself and speaks OSV's batch API).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.support.jsonserver import serving_json
from tests.support.osv_emulator import OsvEmulator, OsvRequest, canonical_name, vulnerability
from tests.support.pypi_advisories import (
    PYPI_JSON_URL,
    Finding,
    locked_requirements,
    pypi_audit,
)

ROOT = Path(__file__).resolve().parents[1]
EXCEPTIONS_FILE = ROOT / "deploy" / "audit-exceptions.toml"
OSV_QUERY_URL = "https://api.osv.dev/v1/query"
"""pip-audit's own default: the real service."""
REQUIRED = "SWITCHBOARD_AUDIT"
"""Set to ``required`` to fail, not skip, when the service cannot be asked."""
_FIELDS = {"id", "package", "reason", "expires"}


class AuditUnavailableError(Exception):
    """The vulnerability service could not be asked, or not about every package."""


@dataclass(frozen=True)
class AuditException:
    """One reviewed decision to live with a vulnerability until ``expires``."""

    id: str
    package: str
    reason: str
    expires: date

    def expired(self, today: date) -> bool:
        """Valid through its ``expires`` day."""
        return today > self.expires

    def covers(self, finding: Finding) -> bool:
        return self.id in finding.names and canonical_name(self.package) == canonical_name(
            finding.package
        )


def load_exceptions(path: Path) -> list[AuditException]:
    """The exceptions file, strictly: exactly the four fields, a real date, a reason."""
    data = tomllib.loads(path.read_text())
    if set(data) - {"exception"}:
        raise ValueError(f"{path}: unknown top-level keys {sorted(set(data) - {'exception'})}")
    exceptions = []
    for number, entry in enumerate(data.get("exception", []), start=1):
        where = f"{path}: exception #{number}"
        if set(entry) != _FIELDS:
            raise ValueError(f"{where}: needs exactly {sorted(_FIELDS)}, has {sorted(entry)}")
        expires = entry["expires"]
        if not isinstance(expires, date) or isinstance(expires, datetime):
            raise TypeError(f"{where}: expires must be a TOML date (2026-12-31)")
        texts = [entry[name] for name in ("id", "package", "reason")]
        if not all(isinstance(text, str) and text.strip() for text in texts):
            raise ValueError(f"{where}: id, package and reason must be non-empty strings")
        exceptions.append(AuditException(entry["id"], entry["package"], entry["reason"], expires))
    return exceptions


@dataclass
class Verdict:
    """The findings judged against the exceptions on ``today``."""

    findings: list[Finding]
    exceptions: list[AuditException]
    today: date

    @property
    def expired(self) -> list[AuditException]:
        return [e for e in self.exceptions if e.expired(self.today)]

    @property
    def unexcepted(self) -> list[Finding]:
        active = [e for e in self.exceptions if not e.expired(self.today)]
        return [f for f in self.findings if not any(e.covers(f) for e in active)]

    @property
    def passed(self) -> bool:
        return not self.unexcepted and not self.expired

    def explain(self) -> str:
        lines = [
            f"{f.package} {f.version}: {f.id} ({', '.join(f.aliases) or 'no aliases'}) has no "
            f"exception in {EXCEPTIONS_FILE.name}"
            for f in self.unexcepted
        ]
        lines += [
            f"exception {e.id} for {e.package} expired on {e.expires}: review it again"
            for e in self.expired
        ]
        return "\n".join(lines)


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")  # `uv run` names itself in UV
    if not found:
        pytest.fail("uv is needed for the audit (it reads uv.lock)")
    return found


def export_lock(directory: Path) -> Path:
    """Every locked package of every group, pinned with hashes, as a requirements file."""
    out = directory / "requirements.txt"
    subprocess.run(
        [
            *(_uv(), "export", "--locked", "--all-groups", "--no-emit-workspace", "--quiet"),
            *("--format", "requirements.txt", "--output-file", str(out)),
        ],
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    return out


def pip_audit(requirements: Path, osv_url: str, directory: Path) -> list[Finding]:
    """pip-audit's findings for ``requirements`` from the OSV service at ``osv_url``."""
    report_path = directory / "pip-audit.json"
    report_path.unlink(missing_ok=True)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip_audit", "--requirement", str(requirements)),
            *("--disable-pip", "--vulnerability-service", "osv", "--osv-url", osv_url),
            *("--format", "json", "--output", str(report_path), "--progress-spinner", "off"),
            *("--timeout", "10", "--cache-dir", str(directory / "pip-audit-cache")),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=110,
    )
    # A report is written only when every package was asked; exit 1 with a report means
    # "vulnerabilities found", exit 1 without one means the tool failed (a traceback).
    if done.returncode not in {0, 1} or not report_path.exists():
        last = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise AuditUnavailableError(f"pip-audit could not ask {osv_url}: {last[0]}")
    report: dict[str, Any] = json.loads(report_path.read_text())
    skipped = [d for d in report["dependencies"] if d.get("skip_reason")]
    if skipped:
        reasons = "; ".join(f"{d['name']}: {d['skip_reason']}" for d in skipped[:3])
        raise AuditUnavailableError(f"{len(skipped)} packages not audited ({reasons} …)")
    return [
        Finding(d["name"], d["version"], v["id"], tuple(v.get("aliases", ())))
        for d in report["dependencies"]
        for v in d.get("vulns", ())
    ]


def uv_audit(service_url: str) -> list[Finding]:
    """``uv audit``'s findings for uv.lock from the OSV service at ``service_url``."""
    preview = ["--preview-features", "audit-command", "--preview-features", "json-output"]
    done = subprocess.run(
        [
            *(_uv(), "audit", "--locked", *preview),
            *("--service-url", service_url, "--output-format", "json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=110,
        env={**os.environ, "UV_HTTP_RETRIES": "0"},
    )
    if done.returncode not in {0, 1}:  # 1: vulnerabilities found; 2: uv failed
        raise AuditUnavailableError(f"uv audit could not ask {service_url}: {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout)
    return [
        Finding(v["dependency"]["name"], v["dependency"]["version"], v["id"], tuple(v["aliases"]))
        for v in report["vulnerabilities"]
    ]


def unavailable(reason: str) -> NoReturn:
    """Skip (the reason shows in the summary), or fail when the audit is required."""
    if os.environ.get(REQUIRED) == "required":
        pytest.fail(f"{REQUIRED}=required and the dependencies could not be audited: {reason}")
    pytest.skip(f"dependencies NOT audited, the vulnerability service failed: {reason}")


def locked_version(package: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return next(str(p["version"]) for p in lock["package"] if p["name"] == package)


# --- the real audit -----------------------------------------------------------------------


def test_exceptions_file_is_reviewed_and_current() -> None:
    """Every exception is well formed and none has expired (checked offline, every run)."""
    exceptions = load_exceptions(EXCEPTIONS_FILE)
    today = datetime.now(UTC).date()
    expired = [e for e in exceptions if e.expired(today)]
    assert not expired, Verdict([], expired, today).explain()


@dataclass
class RealAudit:
    """The audit of the lock against the real services."""

    findings: list[Finding]
    not_audited: list[str]
    """``name==version`` of the packages no source could answer for."""
    source: str


def audit_with_fallback(requirements: Path, directory: Path, pypi_url: str) -> RealAudit:
    """pip-audit against OSV; if OSV cannot be asked, PyPI's own advisories for every
    package at its latest release (the rest: not audited). Neither reachable: unavailable."""
    try:
        return RealAudit(pip_audit(requirements, OSV_QUERY_URL, directory), [], "OSV")
    except AuditUnavailableError as exc:
        osv_failure = str(exc)
    try:
        pypi = pypi_audit(locked_requirements(requirements), pypi_url)
    except httpx.HTTPError as exc:
        unavailable(f"{osv_failure}; and PyPI's JSON API failed too: {exc!r}")
    source = f"PyPI's advisories ({len(pypi.audited)} packages at their latest release)"
    return RealAudit(pypi.findings, pypi.not_audited, f"{source}; OSV: {osv_failure}")


@pytest.fixture(scope="module")
def real_audit(tmp_path_factory: pytest.TempPathFactory) -> RealAudit:
    """The real audit, once per run."""
    directory = tmp_path_factory.mktemp("real-audit")
    return audit_with_fallback(export_lock(directory), directory, PYPI_JSON_URL)


def test_locked_dependencies_have_no_unexcepted_vulnerability(real_audit: RealAudit) -> None:
    """The real audit: every package a source could answer for, the reviewed exceptions."""
    verdict = Verdict(
        real_audit.findings, load_exceptions(EXCEPTIONS_FILE), datetime.now(UTC).date()
    )
    assert verdict.passed, f"{verdict.explain()}\n(source: {real_audit.source})"


def test_every_locked_dependency_was_audited(real_audit: RealAudit) -> None:
    """What no source answered for is reported, not passed over."""
    if real_audit.not_audited:
        unavailable(
            f"{len(real_audit.not_audited)} locked packages not audited "
            f"({', '.join(real_audit.not_audited[:5])}); audited through {real_audit.source}"
        )


# --- the gate, proven offline -------------------------------------------------------------

VULNERABLE = "httpx"
"""A locked package (a runtime dependency of every service) the emulator calls vulnerable."""
MADE_UP_ID = "SBX-2026-0001"
MADE_UP_ALIAS = "CVE-2099-0001"

Engine = Callable[[str, Path], list[Finding]]
"""Runs one audit tool against the OSV service at a root URL (``http://127.0.0.1:PORT``)."""


def _pip_audit_engine(root: str, directory: Path) -> list[Finding]:
    return pip_audit(export_lock(directory), f"{root}/v1/query", directory)


def _uv_audit_engine(root: str, _directory: Path) -> list[Finding]:
    return uv_audit(root)


def _uv_has_audit() -> bool:
    probe = subprocess.run(
        [_uv(), "audit", "--help"], capture_output=True, check=False, timeout=30, cwd=ROOT
    )
    return probe.returncode == 0


@pytest.fixture(scope="module", params=["pip-audit", "uv audit"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The audit tool: pip-audit (what the real audit runs), or uv's own ``uv audit``."""
    if request.param == "uv audit":
        if not _uv_has_audit():
            pytest.skip(f"this uv ({_uv()}) has no `uv audit` (uv 0.13 or newer has)")
        return _uv_audit_engine
    return _pip_audit_engine


@dataclass
class EmulatedAudit:
    """What one tool found, asking the emulator about the whole lock."""

    findings: list[Finding]
    requests: list[OsvRequest]


@pytest.fixture(scope="module")
def emulated(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> EmulatedAudit:
    """The tool run once per module against a local OSV service that knows one made-up
    vulnerability of the locked httpx; the tests judge its findings with various
    exceptions (what the gate decides does not change what the tool finds)."""
    version = locked_version(VULNERABLE)
    record = vulnerability(MADE_UP_ID, VULNERABLE, version, fixed="99.0", aliases=(MADE_UP_ALIAS,))
    with OsvEmulator(records=[record]) as osv:
        findings = engine(osv.url, tmp_path_factory.mktemp("audit"))
    return EmulatedAudit(findings, osv.requests)


def _exception(expires: date, vuln_id: str = MADE_UP_ALIAS) -> AuditException:
    return AuditException(vuln_id, VULNERABLE, "made up for the gate's own test", expires)


def _write(path: Path, exceptions: list[AuditException]) -> Path:
    path.write_text(
        "".join(
            f'[[exception]]\nid = "{e.id}"\npackage = "{e.package}"\n'
            f'reason = "{e.reason}"\nexpires = {e.expires.isoformat()}\n\n'
            for e in exceptions
        )
    )
    return path


def test_a_vulnerable_locked_package_fails_the_audit(emulated: EmulatedAudit) -> None:
    verdict = Verdict(emulated.findings, load_exceptions(EXCEPTIONS_FILE), datetime.now(UTC).date())
    assert not verdict.passed
    assert [(f.package, f.names) for f in verdict.unexcepted] == [
        (VULNERABLE, {MADE_UP_ID, MADE_UP_ALIAS})
    ]
    assert MADE_UP_ID in verdict.explain()
    assert MADE_UP_ALIAS in verdict.explain()
    # The tool asked about the whole lock, not only the vulnerable package.
    asked = [r.body for r in emulated.requests if r.path == "/v1/query"]
    for batch in (r.body for r in emulated.requests if r.path == "/v1/querybatch"):
        asked += batch["queries"]
    names = {canonical_name(query["package"]["name"]) for query in asked}
    assert {VULNERABLE, "pydantic", "nats-py", "litestar"} <= names
    assert len(names) > 100


def test_a_recorded_exception_lets_the_audit_pass(emulated: EmulatedAudit, tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    exceptions = load_exceptions(_write(tmp_path / "x.toml", [_exception(today)]))
    verdict = Verdict(emulated.findings, exceptions, today)
    assert verdict.findings, "the made-up vulnerability must still be found"
    assert verdict.passed, verdict.explain()


def test_an_expired_exception_fails_the_audit_again(
    emulated: EmulatedAudit, tmp_path: Path
) -> None:
    today = datetime.now(UTC).date()
    stale = _exception(today - timedelta(days=1))
    exceptions = load_exceptions(_write(tmp_path / "x.toml", [stale]))
    verdict = Verdict(emulated.findings, exceptions, today)
    assert not verdict.passed
    assert verdict.expired == [stale]
    assert [f.names for f in verdict.unexcepted] == [{MADE_UP_ID, MADE_UP_ALIAS}]
    assert "expired on" in verdict.explain()


def test_an_exception_for_another_package_does_not_cover_it() -> None:
    finding = Finding(VULNERABLE, "0.28.1", MADE_UP_ID, (MADE_UP_ALIAS,))
    other = AuditException(MADE_UP_ID, "requests", "wrong package", date(2999, 1, 1))
    assert Verdict([finding], [other], date(2026, 1, 1)).unexcepted == [finding]


def test_an_unreachable_service_is_not_a_pass(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed port: the tool's failure surfaces as "not audited", never as no findings,
    and ``SWITCHBOARD_AUDIT=required`` turns that into a failure."""
    with OsvEmulator() as gone:
        root = gone.url
    # Stopped: nothing listens on its port any more.
    with pytest.raises(AuditUnavailableError) as caught:
        engine(root, tmp_path)
    monkeypatch.setenv(REQUIRED, "required")
    with pytest.raises(pytest.fail.Exception, match="could not be audited"):
        unavailable(str(caught.value))
    monkeypatch.delenv(REQUIRED)
    with pytest.raises(pytest.skip.Exception, match="NOT audited"):
        unavailable(str(caught.value))


@pytest.mark.parametrize(
    "entry",
    [
        'id = "X"\npackage = "httpx"\nexpires = 2030-01-01\n',  # no reason
        'id = "X"\npackage = "httpx"\nreason = " "\nexpires = 2030-01-01\n',
        'id = "X"\npackage = "httpx"\nreason = "r"\nexpires = "2030-01-01"\n',  # a string
        'id = "X"\npackage = "httpx"\nreason = "r"\nexpires = 2030-01-01\nextra = 1\n',
    ],
)
def test_a_malformed_exception_is_refused(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[[exception]]\n{entry}")
    with pytest.raises((ValueError, TypeError), match="exception #1"):
        load_exceptions(path)


# --- PyPI's advisories, the fallback source, proven offline ------------------------------


def test_pypi_advisories_audit_latest_releases_and_name_the_rest() -> None:
    version = locked_version(VULNERABLE)
    withdrawn = {"id": "SBX-OLD", "aliases": [], "withdrawn": "2026-01-01T00:00:00Z"}
    made_up = {"id": MADE_UP_ID, "aliases": [MADE_UP_ALIAS], "withdrawn": None}
    projects = {
        VULNERABLE: {"info": {"version": version}, "vulnerabilities": [made_up, withdrawn]},
        "older": {"info": {"version": "2.0"}, "vulnerabilities": []},
        "pip": {"info": {"version": "0"}},  # what the reachability probe asks about
    }

    def pypi_json(_method: str, path: str, _body: object) -> tuple[int, object]:
        """``GET /<project>/json`` from the table above; any other project: 404."""
        data = projects.get(path.strip("/").removesuffix("/json"))
        return (200, data) if data is not None else (404, {"message": "Not Found"})

    with serving_json(pypi_json) as url:
        audit = pypi_audit([(VULNERABLE, version), ("older", "1.0"), ("gone", "1.0")], url)
    assert audit.findings == [Finding(VULNERABLE, version, MADE_UP_ID, (MADE_UP_ALIAS,))]
    assert audit.audited == [f"{VULNERABLE}=={version}"]
    assert audit.not_audited == ["older==1.0", "gone==1.0"]
    findings = audit.findings
    today = datetime.now(UTC).date()
    assert not Verdict(findings, [], today).passed
    assert Verdict(findings, [_exception(today + timedelta(days=30))], today).passed


def test_an_unreachable_pypi_is_not_a_pass() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(httpx.HTTPError):
        pypi_audit([(VULNERABLE, locked_version(VULNERABLE))], f"http://127.0.0.1:{port}")
