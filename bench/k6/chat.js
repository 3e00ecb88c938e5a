// One k6 scenario: constant virtual users posting chat completions for a fixed time.
// Parameters come from the environment (see bench/run.py):
//   BASE_URL  the API root, e.g. http://127.0.0.1:8080/v1
//   API_KEY   bearer token (any string for the bare upstream)
//   STREAM    "1" for SSE streams
//   VUS, DURATION, MODEL
//   WORKLOAD  "fresh" (default: one prompt, no seed, never cacheable), "seed" (one
//             deterministic request over and over: after the first, all cache hits) or
//             "replay" (deterministic requests drawn from PROMPTS distinct prompts with a
//             Zipf-like skew, as a replayed production log: the hit rate is measured)
//   PROMPTS   distinct prompts of the replay workload (default 500); RUN makes them unique
//             to one run, so that no earlier run's cache entries count
import http from "k6/http";
import { check } from "k6";
import { Trend, Rate } from "k6/metrics";

const ttfb = new Trend("ttfb_ms", true);
const failures = new Rate("failed_requests");
const cacheHits = new Rate("cache_hits");

export const options = {
  scenarios: {
    load: {
      executor: "constant-vus",
      vus: Number(__ENV.VUS || 1),
      duration: __ENV.DURATION || "10s",
      gracefulStop: "5s",
    },
  },
  discardResponseBodies: false,
  summaryTrendStats: ["med", "p(95)", "p(99)", "avg", "max", "count"],
};

const stream = __ENV.STREAM === "1";
const workload = __ENV.WORKLOAD || "fresh";
const prompts = Number(__ENV.PROMPTS || 500);
const run = __ENV.RUN || "0";

function request(content, deterministic) {
  return JSON.stringify({
    model: __ENV.MODEL || "openai/gpt-4o-mini",
    messages: [{ role: "user", content: content }],
    stream: stream,
    ...(deterministic ? { seed: 7, temperature: 0 } : {}),
  });
}

const fixed = request("Say hello in one short sentence.", workload === "seed");

// A per-VU linear congruential generator: the same sequence of prompts on every run.
let state = 0;
function random() {
  if (state === 0) state = 7919 * __VU;
  state = (state * 48271) % 2147483647;
  return state / 2147483647;
}

// Zipf-like rank (exponent 1) over `prompts` ranks by inverse transform of the continuous
// approximation: rank r has weight 1/r, so a few prompts are very common, most are rare.
function zipfRank() {
  return Math.min(prompts, Math.floor(Math.exp(random() * Math.log(prompts + 1))));
}

function body() {
  if (workload !== "replay") return fixed;
  return request(`Replay ${run}: question number ${zipfRank()}.`, true);
}
const params = {
  headers: { "Content-Type": "application/json", Authorization: `Bearer ${__ENV.API_KEY || "x"}` },
  timeout: "60s",
};

export default function () {
  const res = http.post(`${__ENV.BASE_URL}/chat/completions`, body(), params);
  const ok = check(res, {
    "status 200": (r) => r.status === 200,
    "complete": (r) => (stream ? String(r.body).includes("data: [DONE]") : String(r.body).includes('"choices"')),
  });
  failures.add(!ok);
  ttfb.add(res.timings.waiting);
  if (ok) cacheHits.add(res.headers["X-Switchboard-Cache"] === "hit");
}
