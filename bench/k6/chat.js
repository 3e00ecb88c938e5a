// One k6 scenario: constant virtual users posting chat completions for a fixed time.
// Parameters come from the environment (see bench/run.py):
//   BASE_URL  the API root, e.g. http://127.0.0.1:8080/v1
//   API_KEY   bearer token (any string for the bare upstream)
//   STREAM    "1" for SSE streams
//   VUS, DURATION, MODEL, SEED ("1" adds a fixed seed: cache-friendly requests)
import http from "k6/http";
import { check } from "k6";
import { Trend, Rate } from "k6/metrics";

const ttfb = new Trend("ttfb_ms", true);
const failures = new Rate("failed_requests");

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
const body = JSON.stringify({
  model: __ENV.MODEL || "openai/gpt-4o-mini",
  messages: [{ role: "user", content: "Say hello in one short sentence." }],
  stream: stream,
  ...(__ENV.SEED === "1" ? { seed: 7, temperature: 0 } : {}),
});
const params = {
  headers: { "Content-Type": "application/json", Authorization: `Bearer ${__ENV.API_KEY || "x"}` },
  timeout: "60s",
};

export default function () {
  const res = http.post(`${__ENV.BASE_URL}/chat/completions`, body, params);
  const ok = check(res, {
    "status 200": (r) => r.status === 200,
    "complete": (r) => (stream ? String(r.body).includes("data: [DONE]") : String(r.body).includes('"choices"')),
  });
  failures.add(!ok);
  ttfb.add(res.timings.waiting);
}
