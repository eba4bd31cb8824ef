-- wrk script of the keygate benchmark harness (bench/bench.py drives it).
--
-- BENCH_PATH       request path (default /)
-- BENCH_HEADERS    file with one header set per line, fields separated by TAB as
--                  "Name: value"; requests go round-robin over the lines (one line = one
--                  session / one API key). Every endpoint of a comparison is driven with the
--                  same lines, so the load generator does the same work for each.
-- At the end it prints one line "BENCHJSON {...}" with the counts and latency percentiles (us).

local path = os.getenv("BENCH_PATH") or "/"
local file = os.getenv("BENCH_HEADERS")
local reqs = {}
local n = 0
local i = 0

function init(args)
  local lines = {}
  if file and file ~= "" then
    for line in io.lines(file) do
      if line ~= "" then table.insert(lines, line) end
    end
  end
  if #lines == 0 then lines = { "" } end
  for _, line in ipairs(lines) do
    local headers = {}
    for field in string.gmatch(line, "[^\t]+") do
      local k, v = string.match(field, "^([^:]+):%s*(.*)$")
      if k then headers[k] = v end
    end
    table.insert(reqs, wrk.format("GET", path, headers))
  end
  n = #reqs
  -- Threads start at different lines.
  i = math.random(n) - 1
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_status":%d,"errors_connect":%d,'
      .. '"errors_read":%d,"errors_write":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,'
      .. '"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
