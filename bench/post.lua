-- POST AdmissionReview bodies over keep-alive connections and report one JSON line.
--
-- The bodies file (path in the BENCH_BODIES environment variable) holds one JSON
-- body per line. One body: a static request (wrk builds it once). Several: each
-- request takes the next one, so a scenario can spread over many distinct Pods.
-- BENCH_BEARER, when set, is sent as "Authorization: Bearer" (the API server's token).

local file = assert(io.open(os.getenv("BENCH_BODIES"), "rb"))
local bodies = {}
for line in file:lines() do
  if #line > 0 then bodies[#bodies + 1] = line end
end
file:close()
assert(#bodies > 0, "no bodies in " .. os.getenv("BENCH_BODIES"))

local headers = {["Content-Type"] = "application/json"}
local bearer = os.getenv("BENCH_BEARER")
if bearer then headers["Authorization"] = "Bearer " .. bearer end

wrk.method = "POST"
for name, value in pairs(headers) do wrk.headers[name] = value end

if #bodies == 1 then
  wrk.body = bodies[1]
else
  local prepared = {}
  local next_index = 0
  init = function(args)
    for i, body in ipairs(bodies) do
      prepared[i] = wrk.format("POST", nil, headers, body)
    end
  end
  request = function()
    next_index = next_index % #prepared + 1
    return prepared[next_index]
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
