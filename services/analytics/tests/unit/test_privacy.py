"""Privacy modes, redaction (secrets, e-mail, cards with Luhn, phones) and the size cap."""

from __future__ import annotations

import pytest

from switchboard.analytics.privacy import (
    TRUNCATION_MARK,
    cap_content,
    luhn_valid,
    redact,
    redact_messages,
    resolve_mode,
)


class TestResolveMode:
    @pytest.mark.parametrize("default", ["off", "metadata", "full"])
    def test_no_per_key_mode_means_the_default(self, default: str) -> None:
        assert resolve_mode(None, default) == default  # type: ignore[arg-type]
        assert resolve_mode("", default) == default  # type: ignore[arg-type]

    @pytest.mark.parametrize("per_key", ["off", "metadata", "full"])
    @pytest.mark.parametrize("default", ["off", "metadata", "full"])
    def test_the_key_overrides_either_way(self, per_key: str, default: str) -> None:
        assert resolve_mode(per_key, default) == per_key  # type: ignore[arg-type]

    def test_an_unknown_mode_never_widens_past_metadata(self) -> None:
        assert resolve_mode("everything", "full") == "metadata"
        assert resolve_mode("everything", "metadata") == "metadata"
        assert resolve_mode("everything", "off") == "off"


class TestLuhn:
    @pytest.mark.parametrize(
        "number",
        [
            "4111111111111111",
            "4242424242424242",
            "378282246310005",
            "5555555555554444",
            "30569309025904",
        ],
    )
    def test_real_test_card_numbers_pass(self, number: str) -> None:
        assert luhn_valid(number)

    @pytest.mark.parametrize("number", ["4111111111111112", "1234567890123456", "", "4111-1111"])
    def test_others_fail(self, number: str) -> None:
        assert not luhn_valid(number)


class TestCards:
    @pytest.mark.parametrize(
        "text",
        [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "3782 822463 10005",  # American Express grouping
            "6011111111111117",
            "4000056655665556",
        ],
    )
    def test_luhn_valid_numbers_are_redacted(self, text: str) -> None:
        assert redact(f"pay with {text} please") == "pay with [card] please"

    def test_a_card_number_followed_by_a_year_is_still_found(self) -> None:
        assert redact("card 4111 1111 1111 1111 2031") == "card [card] 2031"

    @pytest.mark.parametrize("text", ["4111111111111112", "1234 5678 9012 3456"])
    def test_numbers_failing_luhn_are_not_cards(self, text: str) -> None:
        assert "[card]" not in redact(f"order {text}")

    def test_a_failing_sixteen_digit_number_is_not_eaten_as_a_phone_either(self) -> None:
        assert redact("order 1234 5678 9012 3456") == "order 1234 5678 9012 3456"


class TestPhones:
    @pytest.mark.parametrize(
        "text",
        [
            "+1 (415) 555-2671",
            "+14155552671",
            "+44 20 7946 0958",
            "(415) 555 2671",
            "415-555-2671",
            "415.555.2671",
            "4155552671",
            "+33 1 23 45 67 89",
            "030 1234567",
        ],
    )
    def test_phone_numbers_are_redacted(self, text: str) -> None:
        assert redact(f"call {text} now") == "call [phone] now"

    @pytest.mark.parametrize(
        "text",
        [
            "on 2024-01-15 at noon",
            "on 15.01.2024 at noon",
            "version 3.11.2",
            "order 12345 shipped",
            "1,234,567 tokens",
            "it costs 42 dollars",
            "between 1999 and 2024",
        ],
    )
    def test_dates_versions_and_short_numbers_stay(self, text: str) -> None:
        assert redact(text) == text


class TestEmails:
    @pytest.mark.parametrize(
        "address", ["alice@example.com", "bob.smith+tag@mail.example.co.uk", "x_y-z@sub.domain.io"]
    )
    def test_addresses_are_redacted(self, address: str) -> None:
        assert redact(f"mail {address}, thanks") == "mail [email], thanks"

    def test_an_at_sign_alone_is_not_an_address(self) -> None:
        assert redact("meet @ noon, user@localhost") == "meet @ noon, user@localhost"


class TestSecrets:
    @pytest.mark.parametrize(
        "secret",
        [
            "sk-sb-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v",
            "sk-or-v1-" + "0123456789abcdef" * 4,
            "sk-proj-abcDEF123ghiJKL456mnoPQR789",
            "sk-ant-api03-abcdefghijklmnop",
            "sk_live_51HabcdefGHIJKLmnop",
            "ghp_" + "a1B2" * 9,
            "xoxb-123456789012-abcdefghij",
            "AKIAIOSFODNN7EXAMPLE",
            "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
            "phc_" + "abcdefghij0123456789XYZ",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "0123456789abcdef0123456789abcdef",  # 32 hex digits
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB2YWx1ZSAxMjM0NTY3",  # base64, mixed classes
        ],
    )
    def test_api_key_like_strings_are_redacted(self, secret: str) -> None:
        assert redact(f"my key is {secret} ok") == "my key is [secret] ok"

    def test_bearer_tokens_keep_the_scheme(self) -> None:
        assert redact("Authorization: Bearer abc.DEF-123_xyz") == "Authorization: Bearer [secret]"
        assert redact("bearer sk-sb-abcdefghijklmnopqrstu") == "bearer [secret]"

    def test_pem_private_keys_are_redacted_whole(self) -> None:
        pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----"
        assert redact(f"key:\n{pem}\nend") == "key:\n[secret]\nend"

    @pytest.mark.parametrize(
        "text",
        [
            "The bearer instrument was signed.",
            "Ask a skilled engineer for a task-specific plan.",
            "550e8400-e29b-41d4-a716-446655440000",  # a UUID is an id, not a secret
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",  # no mix of classes
            "path/to/some/resource/in/a/long/directory/tree",
        ],
    )
    def test_ordinary_text_stays(self, text: str) -> None:
        assert redact(text) == text

    def test_everything_at_once(self) -> None:
        text = (
            "I am alice@example.com, +1 415 555 2671, card 4242 4242 4242 4242, "
            "key sk-sb-ABCDEFGHIJ1234567890"
        )
        assert redact(text) == "I am [email], [phone], card [card], key [secret]"


class TestRedactMessages:
    def test_text_is_redacted_and_structure_kept(self) -> None:
        messages = [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Mail bob@example.com"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo", "detail": "low"},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {
                        "type": "input_audio",
                        "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0123456789abcdef0123456789abcdef",
                        "type": "function",
                        "function": {"name": "send", "arguments": '{"to": "bob@example.com"}'},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_0123456789abcdef0123456789abcdef",
                "content": "sent",
            },
        ]
        assert redact_messages(messages) == [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Mail [email]"},
                    {"type": "image_url", "image_url": {"url": "[media]", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {"type": "input_audio", "input_audio": {"data": "[media]", "format": "wav"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0123456789abcdef0123456789abcdef",
                        "type": "function",
                        "function": {"name": "send", "arguments": '{"to": "[email]"}'},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_0123456789abcdef0123456789abcdef",
                "content": "sent",
            },
        ]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _answer(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


class TestCapContent:
    def test_content_within_the_cap_is_unchanged(self) -> None:
        capped = cap_content([_user("hello")], [_answer("hi")], 100)
        assert (capped.input, capped.output, capped.truncated) == (
            [_user("hello")],
            [_answer("hi")],
            False,
        )

    def test_total_text_never_exceeds_the_cap(self) -> None:
        capped = cap_content([_user("a" * 500), _user("b" * 500)], [_answer("c" * 500)], 100)
        text = "".join(
            m["content"].replace(TRUNCATION_MARK, "") for m in [*capped.input[1:], *capped.output]
        )
        assert len(text) == 100
        assert capped.truncated

    def test_the_output_gets_half_and_the_newest_prompt_text_the_rest(self) -> None:
        capped = cap_content([_user("old" * 100), _user("n" * 100)], [_answer("o" * 100)], 100)
        assert capped.output == [_answer("o" * 50 + TRUNCATION_MARK)]
        assert capped.input == [
            {"role": "system", "content": "[1 earlier message omitted]"},
            _user("n" * 50 + TRUNCATION_MARK),
        ]

    def test_a_short_prompt_leaves_the_output_more_room(self) -> None:
        capped = cap_content([_user("q" * 10)], [_answer("o" * 200)], 100)
        assert capped.input == [_user("q" * 10)]
        assert capped.output == [_answer("o" * 90 + TRUNCATION_MARK)]

    def test_a_short_output_leaves_the_prompt_more_room(self) -> None:
        capped = cap_content([_user("p" * 200)], [_answer("ok")], 100)
        assert capped.output == [_answer("ok")]
        assert capped.input == [_user("p" * 98 + TRUNCATION_MARK)]

    def test_several_omitted_messages_are_counted(self) -> None:
        capped = cap_content([_user("x" * 60)] * 3 + [_user("y" * 60)], [], 60)
        assert capped.input == [
            {"role": "system", "content": "[3 earlier messages omitted]"},
            _user("y" * 60),
        ]

    def test_a_zero_cap_keeps_no_text(self) -> None:
        capped = cap_content([_user("secret plans")], [_answer("sure")], 0)
        assert capped.output == [_answer(TRUNCATION_MARK)]
        assert capped.input == [{"role": "system", "content": "[1 earlier message omitted]"}]
        assert capped.truncated
