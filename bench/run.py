"""``uv run --group bench python -m bench.run``: measure, then write ``docs/benchmarks.md``.

Same machine, same run, same upstream (nginx with fixed answers), same load tool (k6):

1. the upstream alone (the floor every gateway adds to);
2. Switchboard as ``switchboard up`` ships it (one edge and one router process);
3. LiteLLM proxy with one worker and with two.

Each target is measured non-streamed and streamed at several concurrencies; requests per
second, latency percentiles, time to first byte, errors and resident memory are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.litellm_proxy import LITELLM_VERSION, LiteLLMProxy, ensure_litellm
from bench.stack import k6_binary, switchboard_up
from bench.upstream import MODEL, NginxUpstream

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "k6" / "chat.js"
WRK_SCRIPT = ROOT / "bench" / "wrk" / "chat.lua"
IDLE_SECONDS = 5
"""Seconds of each one-client run of the added-latency measurement."""


@dataclass
class Result:
    target: str
    stream: bool
    vus: int
    rps: float
    p50: float
    p95: float
    p99: float
    ttfb_p50: float
    errors: float
    requests: int
    hit_rate: float | None = None
    """Share of successful requests answered from the response cache (replay workload)."""


@dataclass(frozen=True)
class Idle:
    """One pair of one-client runs: the upstream alone, then through the target."""

    base_p50: float
    p50: float
    failed: int
    """Failed requests of both runs (an error answer, a broken stream, a socket error)."""

    @property
    def added(self) -> float:
        return self.p50 - self.base_p50


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    rss_mb: dict[str, float] = field(default_factory=dict)
    started: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    load: tuple[float, float, float] = field(default_factory=os.getloadavg)
    """The machine's load average when the run started: other work skews every target."""
    idle: dict[tuple[str, str, bool], list[Idle]] = field(default_factory=dict)
    """(target, load tool, streamed) → alternating one-client runs of nginx and the target."""


def run_k6(
    base_url: str,
    api_key: str,
    *,
    stream: bool,
    vus: int,
    duration: str,
    workload: str = "fresh",
) -> dict:
    """One k6 run; ``workload`` is ``fresh``, ``seed`` or ``replay`` (see ``k6/chat.js``)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {
            **os.environ,
            "BASE_URL": base_url,
            "API_KEY": api_key,
            "STREAM": "1" if stream else "0",
            "VUS": str(vus),
            "DURATION": duration,
            "MODEL": MODEL,
            "WORKLOAD": workload,
            "RUN": uuid.uuid4().hex[:8],
            "K6_NO_USAGE_REPORT": "true",
        }
        subprocess.run(  # noqa: S603 - fixed argv
            [
                k6_binary(),
                "run",
                "--quiet",
                "--no-color",
                "--summary-export",
                out.name,
                str(SCRIPT),
            ],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        summary: dict = json.loads(Path(out.name).read_text() or "{}")
    return summary


def run_wrk(base_url: str, api_key: str, *, stream: bool, duration: str) -> tuple[float, int]:
    """One wrk run of one connection: its p50 in ms and how many requests failed."""
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk measures the one-client latency: apt-get install wrk")
    env = {**os.environ, "API_KEY": api_key, "STREAM": "1" if stream else "0", "MODEL": MODEL}
    argv = [found, "-t1", "-c1", f"-d{duration}", "-s", str(WRK_SCRIPT)]
    done = subprocess.run(  # noqa: S603 - fixed argv
        [*argv, f"{base_url}/chat/completions"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    found_line = re.search(r"^wrk requests=(\d+) failed=(\d+) p50=([\d.]+)", done.stdout, re.M)
    if done.returncode or found_line is None:
        raise RuntimeError(f"wrk failed against {base_url}: {(done.stderr or done.stdout)[-300:]}")
    requests, failed = int(found_line[1]), int(found_line[2])
    return float(found_line[3]), failed + (requests == 0)


def run_k6_one(base_url: str, api_key: str, *, stream: bool, duration: str) -> tuple[float, int]:
    """One k6 run of one user: its p50 in ms and how many requests failed."""
    result = _result(
        "", stream, 1, run_k6(base_url, api_key, stream=stream, vus=1, duration=duration)
    )
    return result.p50, round(result.errors * result.requests) + (result.requests == 0)


ONE_CLIENT = {"wrk": run_wrk, "k6": run_k6_one}
"""Load tool → one client's run: (p50 in ms, failed requests)."""


def _result(target: str, stream: bool, vus: int, summary: dict) -> Result:
    metrics = summary.get("metrics", {})
    duration = metrics.get("http_req_duration", {})
    ttfb = metrics.get("ttfb_ms", {})
    reqs = metrics.get("http_reqs", {})
    failed = metrics.get("failed_requests", {})
    return Result(
        target,
        stream,
        vus,
        rps=float(reqs.get("rate", 0.0)),
        p50=float(duration.get("med", 0.0)),
        p95=float(duration.get("p(95)", 0.0)),
        p99=float(duration.get("p(99)", 0.0)),
        ttfb_p50=float(ttfb.get("med", 0.0)),
        errors=float(failed.get("value", 0.0)),
        requests=int(reqs.get("count", 0)),
        hit_rate=float(hits["value"]) if (hits := metrics.get("cache_hits")) else None,
    )


def rss_mb(pids: list[int]) -> float:
    """Resident memory of ``pids`` and all their descendants, in MiB."""
    seen: set[int] = set()
    todo = list(pids)
    total_kb = 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        status = Path(f"/proc/{pid}/status")
        if not status.exists():
            continue
        match = re.search(r"VmRSS:\s+(\d+)", status.read_text())
        total_kb += int(match.group(1)) if match else 0
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if children.exists():
            todo += [int(c) for c in children.read_text().split()]
    return total_kb / 1024


def measure(
    report: Report,
    target: str,
    base_url: str,
    key: str,
    *,
    stream: bool,
    concurrencies: list[int],
    duration: str,
    workload: str = "fresh",
) -> None:
    """Measure ``target`` at each concurrency with ``workload`` (``k6/chat.js``): ``seed``
    sends one deterministic request over and over (after the warm-up every one is a
    response-cache hit); ``replay`` draws deterministic requests from a skewed set of
    prompts, new to each run, so the cache's hit rate is measured from cold."""
    warm = "fresh" if workload == "replay" else workload
    run_k6(base_url, key, stream=stream, vus=8, duration="3s", workload=warm)
    for vus in concurrencies:
        summary = run_k6(
            base_url, key, stream=stream, vus=vus, duration=duration, workload=workload
        )
        result = _result(target, stream, vus, summary)
        report.results.append(result)
        hits = "" if result.hit_rate is None else f" cache hits={result.hit_rate:.1%}"
        print(
            f"{target:<22} stream={stream!s:<5} vus={vus:<5} rps={result.rps:8.1f} "
            f"p50={result.p50:7.1f}ms p99={result.p99:8.1f}ms errors={result.errors:.3f}{hits}",
            flush=True,
        )


def measure_idle(
    report: Report,
    target: str,
    upstream: str,
    base_url: str,
    key: str,
    *,
    stream: bool,
    pairs: int,
    tools: tuple[str, ...] = ("wrk", "k6"),
) -> None:
    """What ``target`` adds to one client's request on an otherwise idle machine: p50 of the
    upstream alone and through it, in ``pairs`` alternating runs per load tool (a VM's
    speed drifts by more than the difference within minutes; alternating cancels that).

    wrk is the issue's own tool for this figure; k6 is measured too, though it spends about
    0.6 ms of CPU per request at one user, on the two cores the gateway runs on.
    """
    run_k6(base_url, key, stream=stream, vus=8, duration="3s")  # warm-up
    duration = f"{IDLE_SECONDS}s"
    for _ in range(pairs):
        for tool in tools:
            one_client = ONE_CLIENT[tool]
            base_p50, base_failed = one_client(upstream, "x", stream=stream, duration=duration)
            p50, failed = one_client(base_url, key, stream=stream, duration=duration)
            run = Idle(base_p50, p50, base_failed + failed)
            report.idle.setdefault((target, tool, stream), []).append(run)
            print(
                f"idle {target:<22} {tool:<3} stream={stream!s:<5} nginx p50={base_p50:.2f}ms "
                f"p50={p50:.2f}ms failed={run.failed}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10s", help="k6 duration of each measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--streams", type=int, default=1000, help="extra streamed concurrency")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument(
        "--idle-pairs", type=int, default=7, help="alternating one-client runs (added latency)"
    )
    parser.add_argument(
        "--litellm-idle-pairs", type=int, default=3, help="the same for each LiteLLM setup (wrk)"
    )
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench-cache")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    report = Report()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        nginx = NginxUpstream.start(workdir / "nginx")
        litellm = None if args.skip_litellm else ensure_litellm(args.cache)
        try:
            for stream in (False, True):
                levels = args.concurrency + ([args.streams] if stream and args.streams else [])
                upstream = nginx.base_url(stream=stream)
                measure(
                    report,
                    "upstream (nginx)",
                    upstream,
                    "x",
                    stream=stream,
                    concurrencies=levels,
                    duration=args.duration,
                )
                with switchboard_up(workdir, upstream, key_name="bench") as stack:
                    base_url, key, pids = stack.base_url, stack.key, stack.pids
                    measure_idle(
                        report,
                        "switchboard",
                        upstream,
                        base_url,
                        key,
                        stream=stream,
                        pairs=args.idle_pairs,
                    )
                    measure(
                        report,
                        "switchboard",
                        base_url,
                        key,
                        stream=stream,
                        concurrencies=levels,
                        duration=args.duration,
                    )
                    measure(
                        report,
                        "switchboard (cache hits)",
                        base_url,
                        key,
                        stream=stream,
                        concurrencies=args.concurrency,
                        duration=args.duration,
                        workload="seed",
                    )
                    if not stream:
                        measure(
                            report,
                            "switchboard (replay)",
                            base_url,
                            key,
                            stream=stream,
                            concurrencies=[max(args.concurrency)],
                            duration=args.duration,
                            workload="replay",
                        )
                    for name in ("edge", "router"):
                        report.rss_mb[f"switchboard {name}"] = max(
                            report.rss_mb.get(f"switchboard {name}", 0.0), rss_mb([pids[name]])
                        )
                if litellm is None:
                    continue
                for workers in (1, 2):
                    proxy = LiteLLMProxy.start(
                        litellm,
                        workdir / "litellm",
                        upstream=upstream,
                        model=MODEL,
                        workers=workers,
                    )
                    try:
                        measure_idle(
                            report,
                            f"litellm {workers} worker(s)",
                            upstream,
                            proxy.base_url,
                            "sk-bench-master",
                            stream=stream,
                            pairs=args.litellm_idle_pairs,
                            tools=("wrk",),
                        )
                        measure(
                            report,
                            f"litellm {workers} worker(s)",
                            proxy.base_url,
                            "sk-bench-master",
                            stream=stream,
                            concurrencies=levels,
                            duration=args.duration,
                        )
                        name = f"litellm {workers} worker(s)"
                        report.rss_mb[name] = max(
                            report.rss_mb.get(name, 0.0), rss_mb([proxy.proc.pid])
                        )
                    finally:
                        proxy.stop()
        finally:
            nginx.stop()
    args.out.write_text(render(report, args) + _reading(args.out))
    print(f"wrote {args.out}")
    return 0


READING = "## Reading this run"
"""The hand-written section at the end of the page, kept by a rerun (to be updated from it)."""


def _reading(page: Path) -> str:
    text = page.read_text() if page.exists() else ""
    start = text.find(READING)
    return "\n" + text[start:] if start >= 0 else ""


def _row(r: Result) -> str:
    return (
        f"| {r.target} | {'yes' if r.stream else 'no'} | {r.vus} | {r.rps:.0f} | {r.p50:.1f} | "
        f"{r.p95:.1f} | {r.p99:.1f} | {r.ttfb_p50:.1f} | {r.errors * 100:.2f} % | {r.requests} |"
    )


def _find(report: Report, target: str, stream: bool, vus: int) -> Result | None:
    return next(
        (r for r in report.results if r.target == target and r.stream == stream and r.vus == vus),
        None,
    )


def _idle_lines(report: Report) -> list[str]:
    if not report.idle:
        return []
    lines = [
        "",
        "## Added latency, one client on an idle machine (same run)",
        "",
        f"Alternating {IDLE_SECONDS} s runs of one client: the upstream alone, then through the "
        "target. Added = the median over the pairs of (p50 through it - p50 of the upstream).",
        "",
        "| target | streamed | load tool | added at p50 | pairs (p50 in ms, upstream → through "
        "it) | failed requests |",
        "| --- | --- | --- | ---: | --- | ---: |",
    ]
    for (target, tool, stream), runs in report.idle.items():
        added = statistics.median(run.added for run in runs)
        pairs = ", ".join(f"{run.base_p50:.2f} → {run.p50:.2f}" for run in runs)
        failed = sum(run.failed for run in runs)
        lines.append(
            f"| {target} | {'yes' if stream else 'no'} | {tool} | **{added:.2f} ms** | {pairs} "
            f"| {failed} |"
        )
    return lines


def render(report: Report, args: argparse.Namespace) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`uv run --group bench python -m bench.run`); rerun it to refresh "
        "every number below but the hand-written reading at the end, which a rerun keeps as it "
        "is. All targets ran in one run, on one machine, against the same upstream "
        "(nginx serving fixed answers), with the same load tools: k6 for every table, and "
        "wrk as well for the one-client added latency (the issue's reference figures came from "
        "wrk, and k6 itself spends about 0.6 ms of CPU per request on the same two cores). "
        f"LiteLLM proxy {LITELLM_VERSION} was installed into a throwaway virtualenv; "
        "it is not a project dependency.",
        "",
        f"- run: {report.started}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; each measurement {args.duration} after a 3 s "
        f"warm-up; load average at the start {report.load[0]:.2f} (1 min)",
        "- Switchboard runs as `switchboard up` ships it, at the default log level (INFO: the "
        "router writes one JSON line per completion); LiteLLM with `LITELLM_LOG=ERROR`",
        "- latency columns are milliseconds per request as k6 saw them; TTFB is time to the "
        "first response byte (for streams: the first chunk)",
        "",
        "| target | streamed | concurrency | req/s | p50 | p95 | p99 | TTFB p50 | errors "
        "| requests |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_row(r) for r in report.results),
        "",
        "## Derived (same run)",
        "",
    ]
    for stream in (False, True):
        for vus in args.concurrency:
            base = _find(report, "upstream (nginx)", stream, vus)
            ours = _find(report, "switchboard", stream, vus)
            best = max(
                (
                    r
                    for r in report.results
                    if r.target.startswith("litellm") and r.stream == stream and r.vus == vus
                ),
                key=lambda r: r.rps,
                default=None,
            )
            if not (base and ours):
                continue
            kind = "streamed" if stream else "non-streamed"
            line = (
                f"- {kind}, {vus} concurrent: Switchboard adds {ours.p50 - base.p50:.1f} ms at p50"
            )
            if best and best.rps:
                line += (
                    f"; {ours.rps / best.rps:.1f}x the requests/s of LiteLLM's best "
                    f"({best.target}),"
                    f" p99 {ours.p99:.0f} ms vs {best.p99:.0f} ms"
                )
            lines.append(line)
    lines += _idle_lines(report)
    lines += ["", "## Response cache (same run)", ""]
    for r in report.results:
        if r.target == "switchboard (cache hits)":
            kind = "streamed" if r.stream else "non-streamed"
            lines.append(
                f"- hits, {kind}, {r.vus} concurrent: p50 {r.p50:.1f} ms, p95 {r.p95:.1f} ms, "
                f"{r.rps:.0f} req/s"
            )
        elif r.target == "switchboard (replay)" and r.hit_rate is not None:
            lines.append(
                f"- replay workload (deterministic requests over a Zipf-skewed set of prompts, "
                f"cold cache), {r.vus} concurrent: {r.hit_rate:.1%} of {r.requests} requests "
                f"were cache hits; p50 {r.p50:.1f} ms, p95 {r.p95:.1f} ms"
            )
    lines += ["", "## Resident memory after load (MiB)", "", "| process | RSS |", "| --- | ---: |"]
    lines += [f"| {name} | {mb:.0f} |" for name, mb in report.rss_mb.items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
