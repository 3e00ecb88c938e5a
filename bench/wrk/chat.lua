-- One wrk run: the same request as k6/chat.js's "fresh" workload, from a client that
-- costs almost no CPU (k6 spends about 0.6 ms of CPU per request at one user, on a machine
-- whose two cores the gateway shares with it). Parameters come from the environment:
--   API_KEY  bearer token (any string for the bare upstream)
--   STREAM   "1" for SSE streams
--   MODEL
-- done() prints one line that bench/run.py reads: requests, failures and latency in ms.
local stream = os.getenv("STREAM") == "1"
local marker = stream and "data: [DONE]" or '"choices"'

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("API_KEY") or "x")
wrk.body = string.format(
  '{"model":"%s","messages":[{"role":"user","content":"Say hello in one short sentence."}],'
    .. '"stream":%s}',
  os.getenv("MODEL") or "openai/gpt-4o-mini",
  stream and "true" or "false"
)

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

bad = 0

function response(status, headers, body)
  if status ~= 200 or not string.find(body, marker, 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local failed = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  for _, thread in ipairs(threads) do
    failed = failed + thread:get("bad")
  end
  io.write(string.format(
    "wrk requests=%d failed=%d p50=%.3f p99=%.3f\n",
    summary.requests, failed, latency:percentile(50) / 1000, latency:percentile(99) / 1000
  ))
end
