"""The README's configuration table names every setting of every service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from switchboard.analytics.settings import AnalyticsSettings
from switchboard.edge.settings import EdgeSettings
from switchboard.metering.settings import MeteringSettings
from switchboard.router.settings import RouterSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def _documented() -> set[str]:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z0-9_]+)`", section, flags=re.MULTILINE))


@pytest.mark.parametrize(
    "settings", [EdgeSettings, RouterSettings, MeteringSettings, AnalyticsSettings]
)
def test_every_setting_is_in_the_readme(settings: type[BaseSettings]) -> None:
    names = {
        (field.validation_alias if isinstance(field.validation_alias, str) else name).upper()
        for name, field in settings.model_fields.items()
    }
    assert names - _documented() == set()


def test_the_readme_opens_with_the_two_commands() -> None:
    opening = README.read_text().split("```sh", 1)[1].split("```", 1)[0]
    assert "uv run switchboard up" in opening
    assert "uv run pytest --cov" in opening
