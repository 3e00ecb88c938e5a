"""``uv run python -m bench.usage``: ``GET /v1/usage`` over a ledger of 1,000,000 rows.

1. ``switchboard up`` in a fresh data dir: metering creates the ledger by its migrations;
   two API keys are made (a big tenant and a small one); the stack stops.
2. ClickHouse seeds the embedded ledger itself (``INSERT … SELECT … FROM numbers()``):
   ``--rows`` requests over 90 days, 300 keys, 30 models, errors, cancels, cache hits,
   unknown costs, redelivered copies. The rollups are views over ``usage_events FINAL``:
   nothing else to fill.
3. Database alone: metering's ``usage_report`` (what answers ``/v1/usage``; imported, so
   that the SQL measured is the SQL served) on that directory, ``--requests`` times per
   key and range (7, 30, 90 days), with ClickHouse's own time and the query plan.
4. End to end: the stack again; ``GET /v1/usage`` one at a time and ``--concurrency`` at
   once, every answer checked against the ledger.

Prints markdown and writes ``docs/benchmarks-usage.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import clickhouse_connect
import httpx
from tests.support.servers import free_port

from switchboard.common.metering import UsageQuery
from switchboard.metering.clickhouse import Client
from switchboard.metering.queries import usage_report

ROOT = Path(__file__).resolve().parents[1]
RANGES = (7, 30, 90)
DATES = ("start_date", "end_date")
SPAN_DAYS = 90
TENANTS = 298
TARGET_MS = 50
_START_TIMEOUT = 120.0

# model|who serves it behind OpenRouter|USD per million prompt|completion tokens; the
# first ones are used most
_MODEL_TABLE = """
openai/gpt-4o-mini|OpenAI|.15|.6 anthropic/claude-sonnet-4|Anthropic|3|15
google/gemini-2.5-flash|Google|.3|2.5 openai/gpt-4.1-mini|OpenAI|.4|1.6
deepseek/deepseek-chat-v3-0324|DeepSeek|.3|.88
meta-llama/llama-3.3-70b-instruct|DeepInfra|.13|.39 openai/gpt-4o|OpenAI|2.5|10
google/gemini-2.0-flash-001|Google|.1|.4 anthropic/claude-3.5-haiku|Anthropic|.8|4
openai/gpt-4.1|OpenAI|2|8 mistralai/mistral-small-3.1-24b-instruct|Mistral|.1|.3
qwen/qwen3-235b-a22b|Fireworks|.13|.6 openai/o4-mini|OpenAI|1.1|4.4
google/gemini-2.5-pro|Google|1.25|10 deepseek/deepseek-r1|DeepSeek|.55|2.19
anthropic/claude-3.7-sonnet|Anthropic|3|15 openai/gpt-4.1-nano|OpenAI|.1|.4
meta-llama/llama-4-maverick|Together|.15|.6 x-ai/grok-3-mini|xAI|.3|.5
mistralai/codestral-2501|Mistral|.3|.9 qwen/qwen-2.5-72b-instruct|Together|.12|.39
meta-llama/llama-3.1-8b-instruct|DeepInfra|.02|.05 openai/o3|OpenAI|2|8
mistralai/mistral-large|Mistral|2|6 x-ai/grok-3|xAI|3|15
cohere/command-r-plus-08-2024|Cohere|2.5|10 anthropic/claude-opus-4|Anthropic|15|75
microsoft/phi-4|Nebius|.07|.14 amazon/nova-lite-v1|Amazon|.06|.24
nvidia/llama-3.1-nemotron-70b-instruct|Lambda|.12|.3
"""
MODELS = [entry.split("|") for entry in _MODEL_TABLE.split()]

# Every value derives from the row number n and 16 uniform draws u[1..16] (a hash of n and
# the seed), so one seed gives one ledger, and a redelivered copy (copy = 1) repeats its row.
# Time grows with n (give or take 5 s), so each insert holds a stretch of time, as metering's
# batches do.
SEED_SQL = """
INSERT INTO usage_events (event_id, request_id, event_version, key_id, key_name, end_user,
    requested_model, served_model, provider, provider_base_url, upstream_provider, tier,
    status, http_status, error_type, error_code, error_message, prompt_tokens,
    completion_tokens, total_tokens, cached_tokens, reasoning_tokens, cost_usd, cost_source,
    latency_ms, ttft_ms, stream, retries, fallbacks, attempts, temperature, max_tokens,
    received_at, started_at, finished_at, cache_hit, cost_saved_usd, stream_sequence,
    ingested_at)
SELECT id, id, 1, kid, key_name,
    if(u[7] < 0.6, concat('user_', toString(cityHash64(n, 'user') % 5000)), ''),
    if(u[8] < 0.15, tier, model), model, 'openrouter', 'https://openrouter.ai/api/v1', vendor,
    if(u[8] < 0.15, tier, ''), status, http, error_type, error_code,
    if(status = 'error', concat('The upstream answered ', toString(http), '.'), ''),
    prompt, completion, prompt + completion, cached,
    if(startsWith(model, 'openai/o') OR endsWith(model, '-r1'), intDiv(completion * 3, 5), 0),
    if(unknown, NULL, toDecimal64(if(cache_hit, 0, cost), 10)),
    multiIf(unknown, 'unknown', u[12] < 0.3, 'catalog', 'upstream'),
    latency, if(stream AND status != 'error', toNullable(toUInt32(120 + 600 * u[5])), NULL),
    stream, toUInt16(u[13] < 0.03), toUInt16(u[13] < 0.01),
    arraySlice([tuple(model, 'openrouter', status, toNullable(http),
        if(error_code = '', NULL, toNullable(error_code)), latency)], 1, if(cache_hit, 0, 1)),
    if(u[14] < 0.5, toNullable(round(u[14] * 2, 1)), NULL),
    if(u[14] < 0.4, toNullable(toUInt32(1024)), NULL),
    fromUnixTimestamp64Milli(at, 'UTC'), fromUnixTimestamp64Milli(at + 2, 'UTC'),
    fromUnixTimestamp64Milli(at + 2 + latency, 'UTC'), cache_hit,
    if(cache_hit AND NOT unknown, toNullable(toDecimal64(cost, 10)), NULL), n + 1,
    fromUnixTimestamp64Milli(at + 3000 + latency + {copy:UInt8} * 600000, 'UTC')
FROM (
    SELECT n, u,
        concat('req_', leftPad(lower(hex(n)), 8, '0'),
            leftPad(lower(hex(cityHash64(n, {seed:UInt64}))), 16, '0')) AS id,
        toUInt32(pow(u[9], 3) * {tenants:UInt32}) AS tenant,
        multiIf(u[1] < {big_share:Float64}, {big_id:String},
            u[1] < {big_share:Float64} + {small_share:Float64}, {small_id:String},
            concat('key_', leftPad(lower(hex(cityHash64('tenant', tenant))), 16, '0'))) AS kid,
        multiIf(kid = {big_id:String}, 'bench-usage-big', kid = {small_id:String},
            'bench-usage-small', concat('tenant-', toString(tenant))) AS key_name,
        1 + toUInt32(pow(u[2], 2.2) * length({models:Array(String)})) AS m,
        {models:Array(String)}[m] AS model, {vendors:Array(String)}[m] AS vendor,
        ['auto', 'premium', 'standard', 'budget'][1 + n % 4] AS tier,
        multiIf(u[4] < 0.965, 'ok', u[4] < 0.99, 'error', 'cancelled') AS status,
        toUInt16(multiIf(status = 'ok', 200, status = 'cancelled', 499,
            [502, 429, 504, 400][1 + n % 4])) AS http,
        if(status = 'error', ['api_error', 'rate_limit_exceeded', 'api_error',
            'invalid_request_error'][1 + n % 4], '') AS error_type,
        if(status = 'error', ['upstream_error', 'rate_limit_exceeded', 'timeout',
            'invalid_value'][1 + n % 4], '') AS error_code,
        if(status = 'error', 0, toUInt64(exp(3.5 + 5 * u[5]))) AS prompt,
        multiIf(status = 'error', 0, status = 'cancelled', toUInt64(exp(1 + 3 * u[6])),
            toUInt64(exp(2 + 4.5 * u[6]))) AS completion,
        if(u[11] < 0.25, intDiv(prompt, 2), 0) AS cached,
        ((prompt - cached / 4 * 3) * {prompt_price:Array(Float64)}[m]
            + completion * {completion_price:Array(Float64)}[m]) / 1e6 AS cost,
        status = 'ok' AND u[10] < 0.05 AS cache_hit,
        u[12] < 0.01 AS unknown,
        u[3] < 0.7 AS stream,
        toUInt32(if(cache_hit, 2 + 10 * u[6], 250 + completion * (8 + 20 * u[7]))) AS latency,
        least({end_ms:Int64}, {end_ms:Int64} - {span_ms:Int64}
            + toInt64(n * {span_ms:Int64} / {rows:UInt64} + (u[15] - 0.5) * 10000)) AS at
    FROM (
        SELECT number AS n,
            arrayMap(i -> (cityHash64(number, {seed:UInt64}, i) % 1000000) / 1e6, range(16)) AS u
        FROM numbers({first:UInt64}, {count:UInt64})
    )
    WHERE {copy:UInt8} = 0 OR u[16] < {duplicates:Float64}
)
"""


@dataclass
class Key:
    """A benchmark API key and its share of the ledger."""

    label: str
    share: float
    key_id: str = ""
    secret: str = ""
    events: dict[int, int] = field(default_factory=dict)
    """Range in days → its events in the ledger (what ``totals.requests`` must say)."""


@dataclass
class Run:
    """Everything the report says."""

    args: argparse.Namespace
    command: str
    keys: list[Key] = field(default_factory=list)
    load: float = field(default_factory=lambda: os.getloadavg()[0])
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    seed_s: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)
    ms: dict[tuple[str, int, str], list[float]] = field(default_factory=dict)
    """(key, days, mode) → milliseconds; modes ``db``, ``seq``, ``conc``."""
    extra: dict[tuple[str, int, str], float] = field(default_factory=dict)
    """(key, days, figure) → value: ``engine50``, ``engine95``, ``cpu50``, ``read``, ``rps``."""
    plan: str = ""


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def date_range(days: int) -> tuple[date, date]:
    end = datetime.now(UTC).date()
    return end - timedelta(days=days - 1), end


def cli(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "switchboard.cli.main", "--data-dir", str(data_dir), *args]


# --- the stack --------------------------------------------------------------------------


@contextmanager
def stack(data_dir: Path) -> Iterator[str]:
    """``switchboard up`` on ``data_dir`` (its upstream a closed local port: nothing here
    calls a model); yields the base URL, then stops it as Ctrl-C does."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTHOG_", "OPENROUTER_"))}
    env |= {"OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1", "LOG_LEVEL": "WARNING"}
    log_path = data_dir.parent / "up.log"
    with log_path.open("ab") as log:
        argv = cli(data_dir, "up", "--port", str(port))
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)  # noqa: S603
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not (data_dir / "state.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"switchboard up did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(90)


def create_key(data_dir: Path, key: Key) -> None:
    argv = cli(data_dir, "keys", "create", "--name", f"bench-usage-{key.label}", "--json")
    created = json.loads(subprocess.run(argv, capture_output=True, check=True).stdout)  # noqa: S603
    key.key_id, key.secret = created["id"], created["key"]


def wait_ready(base_url: str, key: Key) -> None:
    """Until metering answers (it opens and migrates the ledger after the edge is up)."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        with suppress(httpx.TransportError):
            headers = {"authorization": f"Bearer {key.secret}"}
            if httpx.get(f"{base_url}/usage", headers=headers, timeout=10).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError("GET /v1/usage did not answer 200 in time")


# --- seeding and the database alone -----------------------------------------------------


def seed(client: Any, keys: list[Key], rows: int, duplicates: float, chunk: int) -> float:
    """Insert ``rows`` events, then redelivered copies of a ``duplicates`` share of them,
    ``chunk`` rows per insert; the seconds it took."""
    params: dict[str, Any] = {
        "seed": 7, "tenants": TENANTS, "rows": rows, "duplicates": duplicates,
        "big_id": keys[0].key_id, "big_share": keys[0].share,
        "small_id": keys[1].key_id, "small_share": keys[1].share,
        "models": [m[0] for m in MODELS], "vendors": [m[1] for m in MODELS],
        "prompt_price": [float(m[2]) for m in MODELS],
        "completion_price": [float(m[3]) for m in MODELS],
        "end_ms": int(time.time() * 1000), "span_ms": SPAN_DAYS * 86_400_000,
    }  # fmt: skip
    started = time.perf_counter()
    for copy in (0, 1):
        for first in range(0, rows, chunk):
            batch = {"copy": copy, "first": first, "count": min(chunk, rows - first)}
            client.command(SEED_SQL, parameters=params | batch)
    return time.perf_counter() - started


def settle(client: Any, limit: float = 120.0) -> None:
    """Wait until no merge has run for 2 s (merges would compete for the CPU with the
    measurement; a ledger that has been running a while has merged its parts too)."""
    deadline, quiet = time.monotonic() + limit, 0
    while quiet < 4 and time.monotonic() < deadline:
        busy = client.query("SELECT count() FROM system.merges").result_rows[0][0]
        quiet = 0 if busy else quiet + 1
        time.sleep(0.5)


def ledger_facts(client: Any) -> dict[str, Any]:
    values = client.query(
        "SELECT count(), (SELECT count() FROM usage_events FINAL), uniqExact(key_id),"
        " uniqExact(served_model), any(p.parts), any(p.bytes), version() FROM usage_events,"
        " (SELECT count() AS parts, sum(bytes_on_disk) AS bytes FROM system.parts"
        "  WHERE active AND table = 'usage_events') AS p"
    ).result_rows[0]
    names = ("rows", "events", "keys", "models", "parts", "bytes", "version")
    return dict(zip(names, values, strict=True))


def measure_db(client: Any, run: Run) -> None:
    """metering's ``usage_report`` (what answers ``/v1/usage``) on the seeded ledger, per
    key and range: wall and CPU time, ClickHouse's own time, the rows it reads."""
    summaries: list[dict[str, Any]] = []
    last: dict[str, Any] = {}

    def record(sql: str, parameters: dict[str, Any]) -> Any:  # and what ClickHouse said
        last.update(sql=sql, parameters=parameters)
        result = client.query(sql, parameters=parameters)
        summaries.append(result.summary)
        return result

    recorder = cast(Client, SimpleNamespace(query=record))
    for key in run.keys:
        for days in RANGES:
            query = UsageQuery(key_id=key.key_id, **dict(zip(DATES, date_range(days), strict=True)))
            key.events[days] = usage_report(recorder, query).totals.requests
            summaries.clear()
            ms, cpu = [], []
            for _ in range(run.args.requests):
                wall, used = time.perf_counter(), time.process_time()  # chdb's threads too
                usage_report(recorder, query)
                cpu.append((time.process_time() - used) * 1000)
                ms.append((time.perf_counter() - wall) * 1000)
            engine = [int(s.get("elapsed_ns", 0)) / 1e6 for s in summaries]
            estimate = client.query(f"EXPLAIN ESTIMATE {last['sql']}", last["parameters"])
            run.ms[key.label, days, "db"] = ms
            run.extra |= {
                (key.label, days, "engine50"): pct(engine, 50),
                (key.label, days, "engine95"): pct(engine, 95),
                (key.label, days, "cpu50"): pct(cpu, 50),
                (key.label, days, "read"): sum(int(row[3]) for row in estimate.result_rows),
            }
            print(f"db   {key.label:<5} {days:>2} d  p50 {pct(ms, 50):6.1f} ms  "
                  f"p95 {pct(ms, 95):6.1f} ms", flush=True)  # fmt: skip
    # the small key's 90 days (the big key's plan has the same shape)
    plan = client.query(f"EXPLAIN indexes = 1 {last['sql']}", last["parameters"])
    lines = [str(row[0]) for row in plan.result_rows]
    run.plan = "\n".join(next((lines[i:] for i, x in enumerate(lines) if "ReadFrom" in x), lines))


# --- end to end -------------------------------------------------------------------------


def measure_http(run: Run, base_url: str, key: Key, days: int, workers: int) -> None:
    """``--requests`` ``GET /v1/usage`` from ``workers`` clients at once, answers checked."""
    params = {name: day.isoformat() for name, day in zip(DATES, date_range(days), strict=True)}
    headers = {"authorization": f"Bearer {key.secret}"}

    def one(client: httpx.Client) -> float:
        started = time.perf_counter()
        response = client.get(f"{base_url}/usage", params=params, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        if (got := response.json()["totals"]["requests"]) != key.events[days]:
            raise RuntimeError(f"{key.label}, {days} d: {got} requests, not {key.events[days]}")
        return elapsed

    def client_loop(count: int) -> list[float]:
        with httpx.Client(timeout=60) as client:
            one(client)  # warm-up, and the connection
            return [one(client) for _ in range(count)]

    requests, started = run.args.requests, time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        shares = [requests // workers + (i < requests % workers) for i in range(workers)]
        ms = [m for done in pool.map(client_loop, shares) for m in done]
    rate = len(ms) / (time.perf_counter() - started)
    mode = "seq" if workers == 1 else "conc"
    run.ms[key.label, days, mode], run.extra[key.label, days, "rps"] = ms, rate
    print(f"http {key.label:<5} {days:>2} d  {workers:>2} at once  p50 {pct(ms, 50):6.1f} ms  "
          f"p95 {pct(ms, 95):6.1f} ms  {rate:5.0f} req/s", flush=True)  # fmt: skip


# --- report -----------------------------------------------------------------------------


def render(run: Run) -> str:
    args, facts = run.args, run.facts
    cells = [(key, days) for key in run.keys for days in RANGES]
    db = {(key.label, days): pct(run.ms[key.label, days, "db"], 95) for key, days in cells}
    worst = max(db, key=db.__getitem__)
    lines = [
        f"## `GET /v1/usage` over a ledger of {facts['rows']:,} rows",
        "",
        f"Written by `{run.command}` (about five minutes; `--help` lists the options); rerun"
        " it to refresh every number here. The ledger is the one `switchboard up` ships"
        " (embedded chdb under the data dir, schema by metering's own migrations), seeded by"
        " ClickHouse itself; the database figures run metering's own `usage_report` on it"
        " in-process, the HTTP figures go through the edge, NATS and metering.",
        "",
        f"- run: {run.started:%Y-%m-%d %H:%M} UTC; machine: {platform.machine()},"
        f" {os.cpu_count()} cores, Python {platform.python_version()}, ClickHouse"
        f" {facts['version']} (chdb); load average at the start {run.load:.2f} (1 min)",
        f"- ledger: {facts['rows']:,} rows ({facts['events']:,} requests and"
        f" {facts['rows'] - facts['events']:,} redelivered copies) over {SPAN_DAYS} days,"
        f" {facts['keys']} keys, {facts['models']} models, {facts['parts']} active parts after"
        f" merges settled, {facts['bytes'] / 2**20:.0f} MiB; seeded in {run.seed_s:.1f} s"
        f" ({args.chunk:,}-row inserts in time order)",
        f"- keys: `big` made {run.keys[0].share:.0%} of the requests, `small`"
        f" {run.keys[1].share:.0%}; each figure is {args.requests} requests after a warm-up,"
        " over the last 7, 30 or 90 days (UTC); every HTTP answer was checked against the"
        " ledger's count",
        f"- target: database query p95 under {TARGET_MS} ms; met in"
        f" {sum(v < TARGET_MS for v in db.values())} of {len(db)} cells; the slowest:"
        f" `{worst[0]}` over {worst[1]} days, p95 {db[worst]:.1f} ms",
        "",
        "Database alone, milliseconds (`usage_report`: query and report; engine: ClickHouse's"
        " own time; CPU: the process's, all threads; rows read: whole granules, from"
        " `EXPLAIN ESTIMATE`):",
        "",
        "| key | days | requests | rows read | engine p50 | engine p95 | p50 | p95 | p99 "
        "| CPU p50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, days in cells:
        ms = run.ms[key.label, days, "db"]
        x = {k[2]: v for k, v in run.extra.items() if k[:2] == (key.label, days)}
        figures = [x["engine50"], x["engine95"], pct(ms, 50), pct(ms, 95), pct(ms, 99), x["cpu50"]]
        lines.append(f"| {key.label} | {days} | {key.events[days]:,} | {x['read']:,.0f} | "
                     + " | ".join(f"{v:.1f}" for v in figures) + " |")  # fmt: skip
    lines += [
        "",
        "End to end, milliseconds at the client (`httpx`, one connection per client):",
        "",
        f"| key | days | sequential p50 | p95 | p99 | {args.concurrency} at once p50 | p95 | p99"
        " | req/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, days in cells:
        modes = (run.ms[key.label, days, "seq"], run.ms[key.label, days, "conc"])
        figures = " | ".join(f"{pct(ms, q):.1f}" for ms in modes for q in (50, 95, 99))
        lines.append(
            f"| {key.label} | {days} | {figures} | {run.extra[key.label, days, 'rps']:.0f} |"
        )
    gain = [
        run.extra[k.label, d, "rps"] * pct(run.ms[k.label, d, "seq"], 50) / 1000 for k, d in cells
    ]
    lines += [
        "",
        f"- {args.concurrency} clients at once get {min(gain):.1f} to {max(gain):.1f} times the"
        " requests per second of one: embedded, metering's one ClickHouse handle computes one"
        " report after another",
    ]
    lines += ["", "Plan of the query (`EXPLAIN indexes = 1`, small key, 90 days):", "", "```",
              run.plan, "```", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="usage events to seed")
    parser.add_argument("--requests", type=int, default=300, help="per key, range and mode")
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP clients at once")
    parser.add_argument("--big-share", type=float, default=0.10, help="the big key's requests")
    parser.add_argument("--small-share", type=float, default=0.01, help="the small key's")
    parser.add_argument("--duplicates", type=float, default=0.002, help="events sent twice")
    parser.add_argument("--chunk", type=int, default=100_000, help="rows per seeding insert")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-usage.md")
    argv = sys.argv[1:] if argv is None else argv
    out = [i for i, a in enumerate(argv) if a.startswith("--out") or argv[i - 1 : i] == ["--out"]]
    shown = " ".join(a for i, a in enumerate(argv) if i not in out)
    run = Run(parser.parse_args(argv), f"uv run python -m bench.usage {shown}".strip())
    args = run.args
    run.keys = [Key("big", args.big_share), Key("small", args.small_share)]
    with tempfile.TemporaryDirectory(prefix="sb-usage-") as tmp:
        data_dir = Path(tmp) / "data"
        with stack(data_dir) as base_url:  # metering migrates the ledger; keys are made
            for key in run.keys:
                create_key(data_dir, key)
            wait_ready(base_url, run.keys[0])
        client = clickhouse_connect.get_client(dsn=f"chdb://{data_dir / 'clickhouse'}")
        try:
            run.seed_s = seed(client, run.keys, args.rows, args.duplicates, args.chunk)
            settle(client)
            run.facts = ledger_facts(client)
            print(f"seeded {run.facts['rows']:,} rows in {run.seed_s:.1f} s", flush=True)
            measure_db(client, run)
        finally:
            client.close()  # frees the directory for metering
        with stack(data_dir) as base_url:
            wait_ready(base_url, run.keys[0])
            for key in run.keys:
                for days in RANGES:
                    for workers in (1, args.concurrency):
                        measure_http(run, base_url, key, days, workers)
    report = render(run)
    print(report)
    args.out.write_text(report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
