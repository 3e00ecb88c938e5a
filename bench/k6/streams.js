// Sustained streaming load for bench/load.py: VUS clients each posting streamed chat
// completions back to back for DURATION, every one bypassing the response cache.
// Parameters come from the environment:
//   BASE_URL  the API root, e.g. http://127.0.0.1:8080/v1
//   API_KEY   bearer token
//   VUS, DURATION, MODEL
//   GRACE     how long requests still in flight at the end may take to finish (default 120s):
//             long enough that none is cut off, so every request k6 started is one it counts
//
// Every answered request is written to the console (bench/load.py passes --console-output)
// as one line "sb <outcome> <status> <x-request-id>", outcome "ok" or "bad": the ledger is
// compared with these ids. A request with no answer at all (status 0) has no id: "-".
import http from "k6/http";
import { Counter, Trend } from "k6/metrics";

const ttft = new Trend("ttft_ms", true);
const completed = new Counter("streams_ok");
const failed = new Counter("streams_failed");

const grace = __ENV.GRACE || "120s";

export const options = {
  scenarios: {
    streams: {
      executor: "constant-vus",
      vus: Number(__ENV.VUS || 1),
      duration: __ENV.DURATION || "10s",
      gracefulStop: grace,
    },
  },
  summaryTrendStats: ["med", "p(95)", "p(99)", "avg", "max", "count"],
};

// Not deterministic (temperature 0.7, no seed) and Cache-Control: no-cache: two reasons for
// the edge to bypass its response cache, so that every request reaches a router.
const body = JSON.stringify({
  model: __ENV.MODEL || "openai/gpt-4o-mini",
  messages: [{ role: "user", content: "Say hello in one short sentence." }],
  stream: true,
  temperature: 0.7,
});
const params = {
  headers: {
    "Content-Type": "application/json",
    Authorization: `Bearer ${__ENV.API_KEY || "x"}`,
    "Cache-Control": "no-cache",
  },
  timeout: grace,
};

export default function () {
  const res = http.post(`${__ENV.BASE_URL}/chat/completions`, body, params);
  const text = String(res.body || "");
  // A stream that failed after it started still ends with [DONE], after an error event.
  const ok =
    res.status === 200 &&
    text.endsWith("data: [DONE]\n\n") &&
    !text.includes('data: {"error"') &&
    res.headers["X-Switchboard-Cache"] !== "hit";
  if (ok) {
    completed.add(1);
    // The edge sends the status line with the first chunk: time to first byte is the time
    // to the first token as the client sees it.
    ttft.add(res.timings.waiting);
  } else {
    failed.add(1);
  }
  console.log(`sb ${ok ? "ok" : "bad"} ${res.status} ${res.headers["X-Request-Id"] || "-"}`);
}
