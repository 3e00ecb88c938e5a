"""``uv run python -m bench.load``: sustained streaming load on the stack, and a soak.

Starts the stack as ``switchboard up`` ships it (nats-server with JetStream, valkey, metering
on embedded ClickHouse, router, edge) against the fast local nginx upstream of ``bench/``,
creates a key without limits, and runs k6 (``bench/k6/streams.js``) with ``--streams``
concurrent streaming clients for ``--duration``; every request bypasses the response cache.
Then it waits until metering has drained the usage stream and compares the ledger with what
k6 saw, request id by request id: every completed request must be exactly one ledger row.

``--soak 10m`` runs the same for longer (at 200 streams unless ``--streams`` says otherwise)
and is read for leaks: every ``--sample-interval`` seconds the resident memory and open file
descriptors of each service process are sampled, and the report gives, per service, the
value at idle, under load at the first and last sample, the maximum and the growth.

The report is a markdown table on stdout and, with ``--out``, in a file; ``--samples``
writes every sample as CSV. The exit status is 1 when a request failed or the ledger
differs from what k6 saw.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nats
from nats.js.errors import NotFoundError

from bench.run import rss_mb
from bench.stack import RunningStack, k6_binary, switchboard_up
from bench.upstream import MODEL, NginxUpstream
from switchboard.cli.metering import METERING_SQL, ask_metering
from switchboard.common.subjects import USAGE_STREAM

__all__ = ["LoadResult", "Sample", "parse_duration", "render", "run_load"]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "k6" / "streams.js"
SERVICES = ("edge", "router", "metering", "nats", "valkey")
_METERING_CONSUMER = "switchboard-metering"  # metering's default durable consumer name
_LEDGER_PAGE = 5000  # under metering's default METERING_SQL_MAX_ROWS (10,000)
_LINE = re.compile(r"sb (ok|bad) (\d+) ([\w-]+)")


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``10m`` or ``1h``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 90s, 10m or 1h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def raise_fd_limit() -> int:
    """Lift this process's open-file limit to its hard limit (children inherit it): 1,000
    streams hold over 2,000 sockets in k6 and the edge together."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# --- resource samples -------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One service's resources at one moment."""

    at: float
    """Seconds since the load started (the ``idle`` sample, taken just before: 0)."""
    phase: str
    """``idle`` (before the load), ``load`` or ``after`` (drained, idle again)."""
    service: str
    rss_mb: float
    fds: int


def open_fds(pid: int) -> int:
    """Open file descriptors of ``pid`` (0 when it is gone)."""
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0


class Sampler:
    """Samples every service's RSS and descriptors: on demand, and every ``interval`` s
    in a background thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int], interval: float) -> None:
        self.pids = {name: pids[name] for name in SERVICES if name in pids}
        self.interval = interval
        self.samples: list[Sample] = []
        self._origin = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def sample(self, phase: str) -> None:
        at = time.monotonic() - self._origin
        for name, pid in self.pids.items():
            self.samples.append(Sample(at, phase, name, rss_mb([pid]), open_fds(pid)))

    def start(self) -> None:
        self._origin = time.monotonic()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample("load")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- k6 ---------------------------------------------------------------------------------


@dataclass
class K6Outcome:
    summary: dict[str, dict[str, float]]
    ok_ids: list[str]
    """x-request-id of every completed stream, in order of completion."""
    bad: list[tuple[int, str]]
    """Status and x-request-id (``-`` when there was no answer) of every failed request."""


def run_streams(
    stack: RunningStack, workdir: Path, *, vus: int, duration: float, grace: float = 120.0
) -> K6Outcome:
    """k6 with ``vus`` streaming clients for ``duration`` seconds; requests still running at
    the end get ``grace`` seconds to finish, so that none is cut off."""
    summary_path, console_path = workdir / "k6-summary.json", workdir / "k6-console.log"
    env = {
        **os.environ,
        "BASE_URL": stack.base_url,
        "API_KEY": stack.key,
        "VUS": str(vus),
        "DURATION": f"{duration:.0f}s",
        "GRACE": f"{grace:.0f}s",
        "MODEL": MODEL,
        "K6_NO_USAGE_REPORT": "true",
    }
    argv = [k6_binary(), "run", "--quiet", "--no-color", "--summary-export", str(summary_path)]
    argv += ["--console-output", str(console_path), str(SCRIPT)]
    done = subprocess.run(  # noqa: S603 - fixed argv
        argv, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if not summary_path.exists():
        raise RuntimeError(f"k6 failed ({done.returncode}): {done.stderr[-2000:]}")
    ok_ids: list[str] = []
    bad: list[tuple[int, str]] = []
    for line in console_path.read_text().splitlines():
        match = _LINE.search(line)
        if match is None:
            continue
        outcome, status, request_id = match.groups()
        if outcome == "ok":
            ok_ids.append(request_id)
        else:
            bad.append((int(status), request_id))
    summary = json.loads(summary_path.read_text()).get("metrics", {})
    counted = sum(
        int(summary.get(name, {}).get("count", 0)) for name in ("streams_ok", "streams_failed")
    )
    if counted != len(ok_ids) + len(bad):
        raise RuntimeError(f"k6 counted {counted} requests but logged {len(ok_ids) + len(bad)}")
    return K6Outcome(summary, ok_ids, bad)


# --- the ledger -------------------------------------------------------------------------


async def _usage_backlog(nats_url: str) -> tuple[int, int]:
    """Events in the usage stream, and those metering has not acknowledged yet."""
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        stream = await js.stream_info(USAGE_STREAM)
        try:
            consumer = await js.consumer_info(USAGE_STREAM, _METERING_CONSUMER)
        except NotFoundError:
            return stream.state.messages, stream.state.messages
        return stream.state.messages, consumer.num_pending + consumer.num_ack_pending
    finally:
        await nc.close()


def wait_drained(nats_url: str, expected: int, timeout: float) -> tuple[int, int]:
    """Wait until the usage stream holds at least ``expected`` events (routers publish after
    the last byte went out) and metering has acknowledged all of them, or ``timeout``
    passes; returns the last (events, not acknowledged)."""
    deadline = time.monotonic() + timeout
    while True:
        events, pending = asyncio.run(_usage_backlog(nats_url))
        if (events >= expected and pending == 0) or time.monotonic() > deadline:
            return events, pending
        time.sleep(0.5)


def _sql(nats_url: str, query: str) -> list[list[object]]:
    answer = ask_metering(nats_url, METERING_SQL, {"sql": query}, timeout=60)
    rows: list[list[object]] = answer["rows"]
    return rows


def ledger_request_ids(nats_url: str, key_id: str) -> list[str]:
    """Every ledger row of ``key_id`` (read with FINAL, as every report does): its
    ``request_id``, page by page through ``switchboard sql``'s interface."""
    ids: list[str] = []
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key_id):
        raise ValueError(f"unexpected key id {key_id!r}")
    while True:
        page = _sql(
            nats_url,
            f"SELECT request_id FROM usage_events FINAL WHERE key_id = '{key_id}' "  # noqa: S608 - checked above
            f"ORDER BY request_id LIMIT {_LEDGER_PAGE} OFFSET {len(ids)}",
        )
        ids += [str(row[0]) for row in page]
        if len(page) < _LEDGER_PAGE:
            return ids


# --- one run ----------------------------------------------------------------------------


@dataclass
class LoadResult:
    streams: int
    duration: float
    completed: int
    failed: list[tuple[int, str]]
    streams_per_second: float
    ttft_ms: tuple[float, float, float]
    """p50, p95, p99 of the time to the first token (first byte of the stream)."""
    k6_ids: list[str]
    ledger_ids: list[str]
    usage_events: int
    """Events in the usage stream once drained (or when the drain timed out)."""
    usage_events_at_end: int
    """Events in the usage stream when k6 finished: how far publishing lagged."""
    drain_seconds: float
    """From k6's end until metering had acknowledged every event (or the timeout)."""
    metering_pending: int
    samples: list[Sample]
    started: str
    load_average: tuple[float, float, float]
    """The machine's 1, 5 and 15 minute load average when the run started."""

    @property
    def missing(self) -> set[str]:
        """Completed requests without a ledger row: lost usage events."""
        return set(self.k6_ids) - set(self.ledger_ids)

    @property
    def unexpected(self) -> set[str]:
        """Ledger rows of requests k6 did not complete."""
        return set(self.ledger_ids) - set(self.k6_ids)

    @property
    def ledger_matches(self) -> bool:
        """One ledger row per completed request, and nothing else."""
        return sorted(self.k6_ids) == sorted(self.ledger_ids)

    @property
    def passed(self) -> bool:
        return not self.failed and self.completed > 0 and self.ledger_matches


def run_load(
    workdir: Path,
    *,
    streams: int,
    duration: float,
    sample_interval: float = 10.0,
    drain_timeout: float = 120.0,
    upstream: str | None = None,
) -> LoadResult:
    """Start the stack in ``workdir`` against ``upstream`` (an OpenAI-compatible API root
    that streams; default: nginx started here), run the load, drain, compare, stop."""
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_average = os.getloadavg()
    raise_fd_limit()
    nginx = None if upstream is not None else NginxUpstream.start(workdir / "nginx")
    try:
        base = nginx.base_url(stream=True) if nginx is not None else str(upstream)
        with switchboard_up(workdir, base) as stack:
            sampler = Sampler(stack.pids, sample_interval)
            sampler.sample("idle")
            sampler.start()
            try:
                outcome = run_streams(stack, workdir, vus=streams, duration=duration)
            finally:
                sampler.stop()
            # How far the usage events lag behind the answers: published when the last
            # answer went out, and how long until metering has all of them.
            events_at_end = asyncio.run(_usage_backlog(stack.nats_url))[0]
            drain_started = time.monotonic()
            events, pending = wait_drained(stack.nats_url, len(outcome.ok_ids), drain_timeout)
            drain_seconds = time.monotonic() - drain_started
            ledger = ledger_request_ids(stack.nats_url, stack.key_id)
            time.sleep(1.0)  # a moment of quiet: what is still held after the load
            sampler.sample("after")
    finally:
        if nginx is not None:
            nginx.stop()
    ttft = outcome.summary.get("ttft_ms", {})
    done = outcome.summary.get("streams_ok", {})
    return LoadResult(
        streams=streams,
        duration=duration,
        completed=len(outcome.ok_ids),
        failed=outcome.bad,
        streams_per_second=float(done.get("rate", 0.0)),
        ttft_ms=(
            float(ttft.get("med", 0.0)),
            float(ttft.get("p(95)", 0.0)),
            float(ttft.get("p(99)", 0.0)),
        ),
        k6_ids=outcome.ok_ids,
        ledger_ids=ledger,
        usage_events=events,
        usage_events_at_end=events_at_end,
        drain_seconds=drain_seconds,
        metering_pending=pending,
        samples=sampler.samples,
        started=started,
        load_average=load_average,
    )


# --- the report -------------------------------------------------------------------------


def _resource_rows(samples: list[Sample], attribute: str, unit: str) -> list[str]:
    rows = []
    for name in SERVICES:
        mine = [s for s in samples if s.service == name]
        if not mine:
            continue
        values = {phase: [getattr(s, attribute) for s in mine if s.phase == phase]
                  for phase in ("idle", "load", "after")}  # fmt: skip
        under = values["load"] or values["idle"]
        first, last = under[0], under[-1]
        peak = max(getattr(s, attribute) for s in mine)
        after = values["after"][-1] if values["after"] else last
        idle = values["idle"][0] if values["idle"] else first

        def show(value: float) -> str:
            return f"{value:.0f}" if unit == "" else f"{value:.1f}"

        growth = last - first
        rows.append(
            f"| {name} | {show(idle)} | {show(first)} | {show(last)} | {show(peak)} | "
            f"{'+' if growth >= 0 else ''}{show(growth)} | {show(after)} |"
        )
    return rows


def render(result: LoadResult, *, soak: bool) -> str:
    """The run as markdown."""
    p50, p95, p99 = result.ttft_ms
    verdict = "exact: one row per completed request" if result.ledger_matches else "MISMATCH"
    lines = [
        f"### {'Soak' if soak else 'Load'}: {result.streams} concurrent streams for "
        f"{result.duration:.0f} s",
        "",
        f"- run: {result.started}; {os.cpu_count()} cores; load average at the start "
        f"{result.load_average[0]:.2f}; the stack as `switchboard up` ships it (one edge, one "
        "router, metering on embedded ClickHouse) against nginx; response cache bypassed",
        "",
        "| requests completed | errors | streams/s | TTFT p50 | TTFT p95 | TTFT p99 "
        "| usage events | ledger rows | ledger vs requests |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {result.completed} | {len(result.failed)} | {result.streams_per_second:.1f} | "
        f"{p50:.0f} ms | {p95:.0f} ms | {p99:.0f} ms | {result.usage_events} | "
        f"{len(result.ledger_ids)} | {verdict} |",
        "",
    ]
    lines += [
        f"- usage events published when the last answer went out: "
        f"{result.usage_events_at_end} of {result.completed}; all in the ledger "
        f"{result.drain_seconds:.1f} s later"
        if result.ledger_matches
        else f"- usage events published when the last answer went out: "
        f"{result.usage_events_at_end} of {result.completed}; waited "
        f"{result.drain_seconds:.1f} s for the rest",
        "",
    ]
    if not result.ledger_matches:
        lines += [
            f"- completed requests without a ledger row: {len(result.missing)} "
            f"(e.g. {sorted(result.missing)[:3]}); ledger rows of no completed request: "
            f"{len(result.unexpected)} (e.g. {sorted(result.unexpected)[:3]}); events metering "
            f"had not acknowledged at the end: {result.metering_pending}",
            "",
        ]
    if result.failed:
        statuses: dict[int, int] = {}
        for status, _ in result.failed:
            statuses[status] = statuses.get(status, 0) + 1
        lines += [f"- failed requests by status: {dict(sorted(statuses.items()))}", ""]
    loads = sorted({s.at for s in result.samples if s.phase == "load"})
    interval = f"every {loads[1] - loads[0]:.0f} s" if len(loads) > 1 else "once"
    header = "| service | idle | first | last | max | growth (last - first) | after drain |"
    lines += [
        f"Resources per service process, sampled {interval} under load ({len(loads)} "
        "samples), once before and once after:",
        "",
        "Resident memory (MiB):",
        "",
        header,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *_resource_rows(result.samples, "rss_mb", "MiB"),
        "",
        "Open file descriptors:",
        "",
        header,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *_resource_rows(result.samples, "fds", ""),
        "",
    ]
    return "\n".join(lines)


def write_samples(path: Path, samples: list[Sample]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["seconds", "phase", "service", "rss_mb", "fds"])
        for s in samples:
            writer.writerow([f"{s.at:.1f}", s.phase, s.service, f"{s.rss_mb:.1f}", s.fds])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, help="concurrent streams (1000; soak: 200)")
    parser.add_argument("--duration", type=parse_duration, default=60.0, help="60s, 10m …")
    parser.add_argument("--soak", type=parse_duration, help="soak for this long, e.g. 10m")
    parser.add_argument("--sample-interval", type=parse_duration, default=10.0)
    parser.add_argument("--drain-timeout", type=parse_duration, default=120.0)
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--samples", type=Path, help="write every resource sample as CSV")
    parser.add_argument(
        "--workdir", type=Path, help="keep data and logs here (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    soak = args.soak is not None
    streams = args.streams or (200 if soak else 1000)
    duration = args.soak if soak else args.duration
    with tempfile.TemporaryDirectory(prefix="sb-load-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_load(
            workdir,
            streams=streams,
            duration=duration,
            sample_interval=args.sample_interval,
            drain_timeout=args.drain_timeout,
        )
    report = render(result, soak=soak)
    print(report)
    if args.out:
        args.out.write_text(report)
    if args.samples:
        write_samples(args.samples, result.samples)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
