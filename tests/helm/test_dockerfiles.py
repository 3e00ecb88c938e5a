"""The service images: static checks of each Dockerfile (no Docker engine needed).

CI builds them for real (.github/workflows/ci.yml); these catch the mistakes a build does
not: running as root, a fat single stage, chdb in the metering image.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .conftest import REPO

SERVICES = ("edge", "router", "metering", "analytics")


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile(service: str) -> None:
    text = (REPO / "services" / service / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) == 2, "multi-stage: a build stage and a runtime stage"
    assert "slim" in text.split("ARG PYTHON_IMAGE=")[1].splitlines()[0]
    # dependencies first (cached layer), then the code
    deps = text.index("--no-install-workspace")
    code = text.index(f"COPY services/{service} services/{service}")
    assert deps < code
    assert f"--package switchboard-{service}" in text
    assert "--locked" in text
    assert "--no-dev" in text
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "--extra" not in commands and "--all-extras" not in commands
    runtime = text[text.rindex("FROM ") :]
    assert re.search(r"^USER 10001", runtime, re.MULTILINE)
    assert "uv" not in re.findall(r"COPY --from=\S+ /(\S+)", runtime)


def test_metering_image_has_no_chdb() -> None:
    """The lock resolves metering's production dependencies without the `embedded` extra."""
    exported = subprocess.run(
        [
            "uv",
            "export",
            "--locked",
            "--no-dev",
            "--no-hashes",
            "--package",
            "switchboard-metering",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    if exported.returncode != 0:
        pytest.skip(f"uv export unavailable: {exported.stderr.strip()[:200]}")
    assert "clickhouse-connect" in exported.stdout
    assert "chdb" not in exported.stdout


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "**/tests", ".switchboard"} <= ignored
    assert "README.md" not in ignored  # the root project's manifest names it
