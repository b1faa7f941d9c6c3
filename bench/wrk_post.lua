-- bench/wrk_post.lua: POST realistic /v1/predict bodies, cycling through a file of JSON lines.
--
--   wrk -t1 -c32 -d15s --latency -s bench/wrk_post.lua http://127.0.0.1:PORT/v1/predict -- BODIES
--
-- BODIES holds one JSON request body per line (bench/overhead.py writes it from
-- inferwatch.inference.data.generate_transactions). Requests are formatted once per thread
-- in init(), so the load generator spends no time building them. done() prints one
-- machine-readable line (prefix BENCH_JSON) with exact counts and percentiles in
-- microseconds; bench/overhead.py parses it beside wrk's own text report.

local requests = {}
local count = 0
local index = 0

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: wrk ... -s wrk_post.lua URL -- BODIES_FILE")
  end
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      count = count + 1
      requests[count] = wrk.format("POST", nil, headers, line)
    end
  end
  if count == 0 then
    error("no request bodies in " .. path)
  end
  index = math.random(count) - 1
end

function request()
  index = index % count + 1
  return requests[index]
end

function done(summary, latency, requests_stats)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\": %d, \"duration_us\": %d, \"non_2xx\": %d, "
      .. "\"connect\": %d, \"read\": %d, \"write\": %d, \"timeout\": %d, "
      .. "\"mean_us\": %.1f, \"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, "
      .. "\"p999_us\": %d, \"max_us\": %d}\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
