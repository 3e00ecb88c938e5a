"""What prompt and output text may leave for PostHog, and in what state.

:func:`resolve_mode` picks the privacy mode of one event (the key's own, else the
configured default). In ``full`` mode, :func:`redact` replaces, in this order:

- secrets: ``Bearer …`` tokens, ``sk-…``/``sk_…``/``rk-…`` keys (OpenAI, Anthropic,
  OpenRouter ``sk-or-…``, ours ``sk-sb-…``, Stripe), GitHub, Slack, AWS, Google and
  PostHog keys, JWTs, PEM private keys, hex strings of 32+ digits and base64-like strings
  of 40+ characters mixing upper case, lower case and digits → ``[secret]``;
- e-mail addresses → ``[email]``;
- card numbers (13-19 digits, plain or in groups of 4, or 4-6-5; only those passing the
  Luhn check) → ``[card]``;
- phone numbers (7-15 digits: international ``+…``, an ``(…)`` area code, groups split
  by one kind of separator, or a bare run of 10 digits or more; dates are left alone)
  → ``[phone]``.

It errs on the side of hiding: an IP address or a 10-digit number can become ``[phone]``.
Media (``data:`` URLs, audio and file data) becomes ``[media]``.

:func:`cap_content` then limits the text one event carries (``ANALYTICS_MAX_CONTENT_CHARS``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast, get_args

from switchboard.analytics.settings import PrivacyMode

__all__ = [
    "TRUNCATION_MARK",
    "CappedContent",
    "cap_content",
    "luhn_valid",
    "redact",
    "redact_messages",
    "resolve_mode",
]

TRUNCATION_MARK: Final = "…[truncated]"

_MODES: Final = frozenset(get_args(PrivacyMode))
_STRICTNESS: Final[dict[str, int]] = {"off": 0, "metadata": 1, "full": 2}


def resolve_mode(per_key: str | None, default: PrivacyMode) -> PrivacyMode:
    """The key's mode when it names one; an unknown value never widens past ``metadata``."""
    if per_key is None or per_key == "":
        return default
    if per_key in _MODES:
        return cast(PrivacyMode, per_key)
    return default if _STRICTNESS[default] <= _STRICTNESS["metadata"] else "metadata"


# ------------------------------------------------------------------------------ redaction

_SECRET: Final = "[secret]"  # noqa: S105 - the replacement text, not a password
_SECRET_PATTERNS: Final = [
    re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S
    ),
    re.compile(r"(?<![A-Za-z0-9_-])(?:sk|rk)[-_][A-Za-z0-9_-]{16,}"),
    re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{20,})"),
    re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}"),
    re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])"),
    re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}"),
    re.compile(r"(?<![A-Za-z0-9])ph[cxs]_[A-Za-z0-9]{20,}"),
    re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?<![A-Za-z0-9])[0-9a-fA-F]{32,}(?![A-Za-z0-9])"),
]
_BEARER: Final = re.compile(r"(?i)\b(bearer)(\s+)([A-Za-z0-9._~+/=-]{8,})")
_BASE64ISH: Final = re.compile(
    r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{40,}={0,2}(?![A-Za-z0-9+/_=-])"
)

_EMAIL: Final = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,}(?![A-Za-z0-9-])"
)

_CARD: Final = re.compile(
    r"(?<![\d])(?:"
    r"\d{4}([ -]?)\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"  # 16-19 digits in groups of 4
    r"|\d{4}([ -]?)\d{6}\2\d{4,5}"  # American Express (15), Diners (14)
    r"|\d{13,19}"
    r")(?![\d])"
)

_PHONE: Final = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:"
    r"\+?\d{7,15}"  # a bare run: +14155552671, 4155552671
    r"|(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,8}([ .-])\d{1,8}(?:\1\d{1,8}){0,4}"
    r")(?![ .-]?\d)(?!\w)"
)
_DATE_LIKE: Final = re.compile(r"\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{4}")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (what every payment card number passes)."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _base64ish(match: re.Match[str]) -> str:
    token = match.group(0)
    mixed = (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
    )
    return _SECRET if mixed else token


def _bearer(match: re.Match[str]) -> str:
    # "Bearer" followed by a plain word is prose ("the bearer instrument"), not a token.
    token = match.group(3)
    if token.isalpha():
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{_SECRET}"


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[card]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if not 7 <= digits <= 15 or _DATE_LIKE.fullmatch(text):
        return text
    bare = text.isdigit()
    return "[phone]" if not bare or digits >= 10 else text


def redact(text: str) -> str:
    """``text`` with secrets, e-mail addresses, card and phone numbers replaced."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_SECRET, text)
    text = _BEARER.sub(_bearer, text)
    text = _BASE64ISH.sub(_base64ish, text)
    text = _EMAIL.sub("[email]", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)


# Values that name structure, not content: kept as they are.
_STRUCTURAL_KEYS: Final = frozenset(
    {"role", "type", "id", "tool_call_id", "index", "finish_reason", "detail", "format"}
)
# Values that hold media bytes (base64): never sent.
_MEDIA_KEYS: Final = frozenset({"data", "file_data"})
_MEDIA: Final = "[media]"


def _walk(value: Any, on_text: Callable[[str], str], key: str | None = None) -> Any:
    if isinstance(value, str):
        if key in _STRUCTURAL_KEYS:
            return value
        if key in _MEDIA_KEYS or value.startswith("data:"):
            return _MEDIA
        return on_text(value)
    if isinstance(value, dict):
        return {k: _walk(v, on_text, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(item, on_text, key) for item in value]
    return value


def redact_messages(messages: Sequence[Any]) -> list[Any]:
    """Chat messages (or output choices) with every text redacted and media removed."""
    return [_walk(message, redact) for message in messages]


# ------------------------------------------------------------------------------- size cap


@dataclass(frozen=True)
class CappedContent:
    """Prompt and output after the size cap."""

    input: list[Any]
    output: list[Any]
    truncated: bool


class _Budget:
    def __init__(self, chars: int) -> None:
        self.left = chars
        self.truncated = False

    def take(self, text: str) -> str:
        if len(text) <= self.left:
            self.left -= len(text)
            return text
        self.truncated = True
        kept, self.left = text[: self.left], 0
        return kept + TRUNCATION_MARK


def _text_length(value: Any) -> int:
    lengths: list[int] = []

    def count(text: str) -> str:
        lengths.append(len(text))
        return text

    _walk(value, count)
    return sum(lengths)


def cap_content(messages: Sequence[Any], choices: Sequence[Any], max_chars: int) -> CappedContent:
    """At most ``max_chars`` characters of text across prompt and output.

    The output comes first, with at least half of the budget (all it needs if the prompt
    is short); the prompt gets the rest, from its newest message back. Older messages
    that no longer fit are replaced by one note saying how many were left out.
    """
    input_needed = _text_length(list(messages))
    output_budget = _Budget(max(max_chars // 2, max_chars - input_needed))
    output = [_walk(choice, output_budget.take) for choice in choices]
    spent = max(max_chars // 2, max_chars - input_needed) - output_budget.left
    input_budget = _Budget(max_chars - spent)
    kept: list[Any] = []
    for message in reversed(messages):
        if input_budget.left == 0 and _text_length(message) > 0:
            break
        kept.append(_walk(message, input_budget.take))
    kept.reverse()
    omitted = len(messages) - len(kept)
    if omitted:
        note = f"[{omitted} earlier message{'s' if omitted > 1 else ''} omitted]"
        kept.insert(0, {"role": "system", "content": note})
    truncated = output_budget.truncated or input_budget.truncated or omitted > 0
    return CappedContent(kept, output, truncated)
