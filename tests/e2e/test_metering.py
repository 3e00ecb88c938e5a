"""Metering as real processes: usage events on JetStream (published as the router does)
become an exact ledger whatever fails, ``switchboard sql`` and ``switchboard usage erase``
work against it, and ``GET /v1/usage`` answers through the edge.

The metering process owns its embedded ClickHouse (chdb); the tests read the ledger only
through it (over NATS, or through the ``switchboard`` command's functions), as a person
would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import orjson
import pytest

from switchboard.cli.sql import run_sql
from switchboard.cli.usage import run_usage
from switchboard.common import subjects
from switchboard.common.events import UsageRecorded
from tests.e2e.conftest import Stack
from tests.support.clickhouse import (
    client_for,
    docker_available,
    embedded_target,
    start_clickhouse_server,
)
from tests.support.metering import (
    create_usage_stream,
    eventually,
    metering_pong,
    publish_usage,
    start_metering,
    usage_event,
)
from tests.support.servers import ManagedProcess, free_port, start_nats
from tests.support.services import create_key

pytestmark = pytest.mark.e2e

CONSUMER = "switchboard-metering"


def _run(coroutine_function: Callable[..., Any], *args: Any) -> Any:
    """Run one async helper on a NATS connection of its own (the CLI functions block)."""
    return asyncio.run(coroutine_function(*args))


class Ledger:
    """A NATS server with the usage stream, and metering processes started on demand."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nats = start_nats(workdir / "nats")
        self.target = embedded_target(workdir / "clickhouse")
        self.processes: list[ManagedProcess] = []
        _run(self._on_nats, create_usage_stream)

    async def _on_nats(self, action: Callable[..., Any], *args: Any) -> Any:
        nc = await nats.connect(self.nats.url)
        try:
            return await action(nc, *args)
        finally:
            await nc.close()

    def start(self, **env: str) -> ManagedProcess:
        env = {"CLICKHOUSE_URL": self.target.url, "METERING_ACK_WAIT": "2", **env}
        clickhouse_url = env.pop("CLICKHOUSE_URL")
        process = start_metering(
            self.workdir / f"metering-{len(self.processes)}",
            nats_url=self.nats.url,
            clickhouse_url=clickhouse_url,
            **env,
        )
        self.processes.append(process)
        return process

    def wait_ready(self, *, consuming: bool = True, ready: bool = True) -> dict[str, Any]:
        """Wait until metering answers its ping, ready and consuming unless told not to."""

        async def answered(nc: Any) -> dict[str, Any]:
            async def check() -> bool:
                pong = await metering_pong(nc)
                if pong is None:
                    return False
                return (pong["ready"] or not ready) and (pong["consuming"] or not consuming)

            await eventually(check, within=30, what="metering ready")
            pong = await metering_pong(nc)
            assert pong is not None
            return pong

        pong: dict[str, Any] = _run(self._on_nats, answered)
        return pong

    def publish(self, events: list[UsageRecorded], *, msg_id: str | None = None) -> int:
        async def send(nc: Any) -> int:
            return await publish_usage(nc, events, msg_id=msg_id)

        stored: int = _run(self._on_nats, send)
        return stored

    def settled(self, within: float = 30) -> None:
        """Wait until every stored event is acknowledged by metering."""

        async def wait(nc: Any) -> None:
            async def check() -> bool:
                info = await nc.jetstream().consumer_info(subjects.USAGE_STREAM, CONSUMER)
                return bool(info.num_pending == 0 and info.num_ack_pending == 0)

            await eventually(check, within=within, what="every event acknowledged")

        _run(self._on_nats, wait)

    def unacknowledged(self) -> tuple[int, int]:
        """(never delivered, delivered and not acknowledged) events of the consumer."""

        async def info(nc: Any) -> tuple[int, int]:
            consumer = await nc.jetstream().consumer_info(subjects.USAGE_STREAM, CONSUMER)
            return int(consumer.num_pending), int(consumer.num_ack_pending)

        counts: tuple[int, int] = _run(self._on_nats, info)
        return counts

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.nats.stop()


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    """NATS with the usage stream; the ``switchboard`` command pointed at it."""
    running = Ledger(tmp_path)
    monkeypatch.setenv("NATS_URL", running.nats.url)
    monkeypatch.delenv("CLICKHOUSE_URL", raising=False)
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "no-stack"))
    try:
        yield running
    finally:
        running.stop()


def sql(capsys: pytest.CaptureFixture[str], query: str, *, as_json: bool = True) -> Any:
    """``switchboard sql [--json] QUERY``: its output (parsed when JSON)."""
    code = run_sql(argparse.Namespace(query=query, json=as_json, timeout=30, data_dir=None))
    out, err = capsys.readouterr()
    assert code == 0, err
    return orjson.loads(out) if as_json else out


def totals(capsys: pytest.CaptureFixture[str]) -> list[Any]:
    """(events, tokens, cost) in the ledger, each event counted once."""
    answer = sql(
        capsys,
        "SELECT count(), sum(prompt_tokens), sum(cost_usd) FROM usage_events FINAL",
    )
    row: list[Any] = answer["rows"][0]
    return row


def test_a_burst_is_counted_exactly(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    ledger.start()
    ledger.wait_ready()
    events = [usage_event(prompt_tokens=i, cost_usd=0.001) for i in range(300)]
    assert ledger.publish(events) == 300
    ledger.settled()
    assert totals(capsys) == [300, sum(range(300)), "0.3000000000"]


def test_duplicate_delivery_is_counted_once(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger.start()
    ledger.wait_ready()
    events = [usage_event() for _ in range(40)]
    ledger.publish(events)
    assert ledger.publish(events) == 0  # same Nats-Msg-Id: JetStream drops them
    ledger.settled()
    assert ledger.publish(events[:25], msg_id="") == 25  # copies that get through
    ledger.settled()
    assert totals(capsys)[0] == 40
    rollup = sql(capsys, "SELECT sum(requests) FROM usage_daily_by_key_model")
    assert rollup["rows"] == [[40]]


def test_metering_killed_during_traffic_then_restarted_is_exact(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    first = ledger.start(METERING_BATCH_SIZE="20")
    ledger.wait_ready()
    ledger.publish([usage_event() for _ in range(100)])
    first.kill()  # mid-traffic, mid-batch: nothing it did not acknowledge is lost
    ledger.publish([usage_event() for _ in range(100)])
    ledger.start(METERING_BATCH_SIZE="20")
    ledger.wait_ready()
    ledger.settled()
    assert totals(capsys)[0] == 200


def test_clickhouse_unavailable_then_back_is_exact(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    down = ledger.start(
        CLICKHOUSE_URL=f"http://default:@127.0.0.1:{free_port()}/default",
        CLICKHOUSE_CONNECT_TIMEOUT="1",
    )
    assert not ledger.wait_ready(consuming=False, ready=False)["ready"]
    ledger.publish([usage_event() for _ in range(30)])
    sql_code = run_sql(argparse.Namespace(query="SELECT 1", json=True, timeout=10, data_dir=None))
    assert sql_code == 1
    assert "not available" in capsys.readouterr().err
    down.stop()
    ledger.start()  # ClickHouse is back (here: metering on a reachable one)
    ledger.wait_ready()
    ledger.settled()
    assert totals(capsys)[0] == 30


def test_keys_never_see_each_others_usage_and_erasure(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger.start()
    ledger.wait_ready()
    ledger.publish(
        [usage_event(key_id="key_one", end_user="u1") for _ in range(3)]
        + [usage_event(key_id="key_two", end_user="u2") for _ in range(2)]
    )
    ledger.settled()
    table = sql(
        capsys,
        "SELECT key_id, sum(requests) AS requests FROM usage_daily_by_key_model"
        " GROUP BY key_id ORDER BY key_id",
        as_json=False,
    )
    assert table.splitlines()[0].split() == ["key_id", "requests"]
    assert [line.split() for line in table.splitlines()[2:4]] == [
        ["key_one", "3"],
        ["key_two", "2"],
    ]
    assert table.splitlines()[-1] == "(2 rows)"

    code = run_usage(
        argparse.Namespace(key_id="key_one", end_user=None, json=True, timeout=60, data_dir=None)
    )
    out = capsys.readouterr().out
    assert code == 0
    erased = orjson.loads(out)
    assert (erased["events"], erased["daily_rollup_rows"]) == (3, 1)
    code = run_usage(
        argparse.Namespace(key_id=None, end_user="u2", json=False, timeout=60, data_dir=None)
    )
    assert code == 0
    assert "erased end user u2: 2 events" in capsys.readouterr().out
    assert totals(capsys)[0] == 0


def test_sql_is_read_only(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    ledger.start()
    ledger.wait_ready(consuming=False)
    for statement in ("DROP TABLE usage_events", "SELECT 1; DELETE FROM usage_events WHERE 1"):
        code = run_sql(argparse.Namespace(query=statement, json=False, timeout=10, data_dir=None))
        assert code == 1
        assert "switchboard sql:" in capsys.readouterr().err
    assert sql(capsys, "SHOW TABLES")["rows"]


def test_commands_without_metering_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("CLICKHOUSE_URL", raising=False)
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path))
    args = argparse.Namespace(query="SELECT 1", json=False, timeout=5, data_dir=None)
    assert run_sql(args) == 1
    assert "no running stack" in capsys.readouterr().err
    server = start_nats(tmp_path / "nats")
    try:
        monkeypatch.setenv("NATS_URL", server.url)
        assert run_sql(args) == 1
        assert "metering is not running" in capsys.readouterr().err
        erase = argparse.Namespace(key_id="k", end_user=None, json=False, timeout=5, data_dir=None)
        assert run_usage(erase) == 1
        assert "metering is not running" in capsys.readouterr().err
    finally:
        server.stop()


# ---------------------------------------------------------------- through the whole stack


@pytest.fixture(scope="module")
def stack_metering(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    """Metering on the e2e stack's NATS, with a durable consumer of its own."""
    workdir = tmp_path_factory.mktemp("stack-metering")
    process = start_metering(
        workdir,
        nats_url=stack.nats.url,
        clickhouse_url=embedded_target(workdir / "clickhouse").url,
        METERING_CONSUMER=f"e2e-{uuid.uuid4().hex[:8]}",
    )
    yield process
    process.stop()


def test_usage_through_the_edge(
    stack: Stack,
    stack_metering: ManagedProcess,
    upstream: Any,
) -> None:
    key = create_key(stack.valkey.url, name=f"usage-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {key['key']}"}
    probe = httpx.get(f"{stack.edge.url}/v1/usage", headers=headers, timeout=15)
    if probe.status_code == 404:
        pytest.skip("the edge does not serve /v1/usage yet (routes/usage.py is not registered)")
    client = openai.OpenAI(base_url=stack.base_url, api_key=key["key"], max_retries=0)
    for _ in range(3):
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )

    def report() -> dict[str, Any]:
        response = httpx.get(f"{stack.edge.url}/v1/usage", headers=headers, timeout=15)
        assert response.status_code in (200, 503), response.text
        body: dict[str, Any] = response.json()
        return body

    async def stream_exists() -> bool:
        nc = await nats.connect(stack.nats.url)
        try:
            await nc.jetstream().stream_info(subjects.USAGE_STREAM)
        except nats.js.errors.NotFoundError:
            return False
        finally:
            await nc.close()
        return True

    if not asyncio.run(stream_exists()):
        pytest.skip("the router publishes no usage events yet (issue 4: no usage stream)")

    async def counted() -> bool:
        return report().get("totals", {}).get("requests") == 3

    asyncio.run(eventually(counted, within=20, what="three requests in /v1/usage"))
    body = report()
    assert body["key_id"] == key["id"]
    assert body["totals"]["prompt_tokens"] > 0
    assert [entry["requests"] for entry in body["by_day"]] == [3]
    other = httpx.get(
        f"{stack.edge.url}/v1/usage", params={"key_id": "key_someone_else"}, headers=headers
    )
    assert other.status_code == 403


def test_sql_against_a_server_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a server URL the command goes straight to ClickHouse: refusals before it
    connects, and a server that is down, are reported (a live server needs Docker: see
    the metering integration tests)."""
    monkeypatch.setenv("CLICKHOUSE_URL", f"http://default:@127.0.0.1:{free_port()}/default")
    drop = argparse.Namespace(query="/* x */ DROP TABLE usage_events", json=False, timeout=2)
    assert run_sql(drop) == 1
    assert "not DROP" in capsys.readouterr().err
    select = argparse.Namespace(query="SELECT 1", json=False, timeout=2)
    assert run_sql(select) == 1
    assert "switchboard sql:" in capsys.readouterr().err


@pytest.mark.skipif(not docker_available(), reason="a ClickHouse server needs Docker here")
def test_sql_on_a_live_server_is_read_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_clickhouse_server() as server:
        target = server.fresh_database()
        with client_for(target) as client:
            client.command("CREATE TABLE t (n UInt8) ENGINE = MergeTree ORDER BY n")
            client.command("INSERT INTO t VALUES (1), (2)")
        monkeypatch.setenv("CLICKHOUSE_URL", target.url)
        assert sql(capsys, "SELECT sum(n) FROM t")["rows"] == [[3]]
        sneaky = argparse.Namespace(
            query="SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
            json=False,
            timeout=10,
        )
        assert run_sql(sneaky) == 1
        assert "readonly" in capsys.readouterr().err.lower()


def test_command_line_and_output_format(
    ledger: Ledger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The parsers the ``switchboard`` command mounts, the running stack's NATS found from
    its state file, and the table format."""
    from switchboard.cli.sql import add_sql_parser, format_table
    from switchboard.cli.state import StackState
    from switchboard.cli.usage import add_usage_parser

    parser = argparse.ArgumentParser(prog="switchboard")
    parser.add_argument("--data-dir")
    commands = parser.add_subparsers(dest="command", required=True)
    add_sql_parser(commands)
    add_usage_parser(commands)
    args = parser.parse_args(["--data-dir", str(tmp_path), "sql", "--json", "SELECT 1 AS one"])
    assert (args.command, args.query, args.json, args.timeout) == (
        "sql",
        "SELECT 1 AS one",
        True,
        60,
    )
    erase = parser.parse_args(["usage", "erase", "--user", "u-1"])
    assert (erase.key_id, erase.end_user, erase.json) == (None, "u-1", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["usage", "erase", "--key", "k", "--user", "u"])
    capsys.readouterr()

    StackState(
        pid=os.getpid(),
        base_url="http://x/v1",
        nats_url=ledger.nats.url,
        redis_url="redis://x",
        services={},
    ).save(tmp_path)
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:9")  # the stack's state wins
    ledger.start()
    ledger.wait_ready(consuming=False)
    assert run_sql(args) == 0
    assert orjson.loads(capsys.readouterr().out)["rows"] == [[1]]

    table = format_table(
        {"columns": ["a", "b"], "rows": [[None, [1, 2]], ["x", {"k": 1}]], "truncated": True}
    )
    assert table.splitlines() == [
        "a     b",
        "----  -------",
        "NULL  [1,2]",
        'x     {"k":1}',
        "(2 rows, cut: add a LIMIT or narrow the query)",
    ]
    assert format_table({"columns": [], "rows": []}) == "(0 rows)"
