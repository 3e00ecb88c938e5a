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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.support.servers import free_port

from bench.litellm_proxy import LITELLM_VERSION, LiteLLMProxy, ensure_litellm
from bench.upstream import MODEL, NginxUpstream

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "k6" / "chat.js"


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


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    rss_mb: dict[str, float] = field(default_factory=dict)
    started: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    load: tuple[float, float, float] = field(default_factory=os.getloadavg)
    """The machine's load average when the run started: other work skews every target."""
    idle: dict[bool, list[tuple[float, float]]] = field(default_factory=dict)
    """Streamed or not → (nginx p50, switchboard p50) of alternating one-client runs."""


def _k6() -> str:
    found = shutil.which("k6") or str(Path(sys.executable).parent / "k6")
    if not Path(found).exists():
        raise RuntimeError("k6 is missing: run with `uv run --group bench`")
    return found


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
            [_k6(), "run", "--quiet", "--no-color", "--summary-export", out.name, str(SCRIPT)],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        summary: dict = json.loads(Path(out.name).read_text() or "{}")
    return summary


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


@contextmanager
def switchboard(workdir: Path, upstream: str) -> Iterator[tuple[str, str, dict[str, int]]]:
    """``switchboard up`` against ``upstream``; yields base URL, an API key and child pids."""
    port = free_port()
    data = workdir / f"sb-{port}"
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            sys.executable,
            "-m",
            "switchboard.cli.main",
            "--data-dir",
            str(data),
            "up",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "OPENROUTER_BASE_URL": upstream,
            "OPENROUTER_API_KEY": "sk-upstream",
            "LOG_LEVEL": "WARNING",
        },
    )
    for line in proc.stdout or ():
        if "Switchboard is up" in line:
            break
        if "could not start" in line:
            raise RuntimeError(line)
    try:
        key = json.loads(
            subprocess.run(  # noqa: S603 - fixed argv
                [
                    sys.executable,
                    "-m",
                    "switchboard.cli.main",
                    "--data-dir",
                    str(data),
                    "keys",
                    "create",
                    "--name",
                    "bench",
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["key"]
        services = json.loads((data / "state.json").read_text())["services"]
        yield f"http://127.0.0.1:{port}/v1", key, services
    finally:
        proc.terminate()
        proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()


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
    report: Report, upstream: str, base_url: str, key: str, *, stream: bool, pairs: int
) -> None:
    """What Switchboard adds to one client's request on an otherwise idle machine: p50 of
    the upstream alone and through Switchboard, in ``pairs`` alternating 5 s runs (a VM's
    speed drifts by more than the difference within minutes; alternating cancels that)."""
    runs = report.idle.setdefault(stream, [])
    run_k6(base_url, key, stream=stream, vus=8, duration="3s")  # warm-up
    for _ in range(pairs):
        base = _result("", stream, 1, run_k6(upstream, "x", stream=stream, vus=1, duration="5s"))
        ours = _result("", stream, 1, run_k6(base_url, key, stream=stream, vus=1, duration="5s"))
        runs.append((base.p50, ours.p50))
        print(f"idle stream={stream!s:<5} nginx p50={base.p50:.2f}ms ours p50={ours.p50:.2f}ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10s", help="k6 duration of each measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--streams", type=int, default=1000, help="extra streamed concurrency")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument(
        "--idle-pairs", type=int, default=7, help="alternating one-client runs (added latency)"
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
                with switchboard(workdir, upstream) as (base_url, key, pids):
                    measure_idle(
                        report, upstream, base_url, key, stream=stream, pairs=args.idle_pairs
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
    lines: list[str] = []
    for stream, runs in report.idle.items():
        if not runs:
            continue
        added = statistics.median(ours - base for base, ours in runs)
        kind = "streamed (p50 of the whole stream)" if stream else "non-streamed"
        lines += [
            "",
            f"Added latency, {kind}, one client on an idle machine: "
            f"**{added:.2f} ms** at p50 (median of {len(runs)} alternating 5 s runs; "
            "p50 in ms, upstream alone → through Switchboard: "
            + ", ".join(f"{base:.2f} → {ours:.2f}" for base, ours in runs)
            + ")",
        ]
    return lines


def render(report: Report, args: argparse.Namespace) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`uv run --group bench python -m bench.run`); rerun it to refresh "
        "every number below but the hand-written reading at the end, which a rerun keeps as it "
        "is. All targets ran in one run, on one machine, against the same upstream "
        "(nginx serving fixed answers), with the same load tool (k6). "
        f"LiteLLM proxy {LITELLM_VERSION} was installed into a throwaway virtualenv; "
        "it is not a project dependency.",
        "",
        f"- run: {report.started}; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; each measurement {args.duration} after a 3 s "
        f"warm-up; load average at the start {report.load[0]:.2f} (1 min)",
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
