-- wrk script of the exchange benchmark: POST one JSON body with fixed headers,
-- then print the results as one JSON line for bench/exchange.py.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/post.lua URL -- BODY_FILE HEADERS_FILE
--
-- BODY_FILE holds the exact request body. HEADERS_FILE holds one "Name: value"
-- per line (the client's Authorization, X-Purpose and X-End-User for the
-- gateway); Content-Type is application/json unless a line sets it. The request
-- is built once per thread in init(), so wrk sends it without calling Lua per
-- request and the load generator stays cheap.

local function read_file(path)
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  return data
end

function init(args)
  wrk.method = "POST"
  wrk.body = read_file(args[1])
  wrk.headers["Content-Type"] = "application/json"
  if args[2] then
    for line in read_file(args[2]):gmatch("[^\r\n]+") do
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then
        wrk.headers[name] = value
      end
    end
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  local percentiles = {}
  for _, p in ipairs({50, 75, 90, 99, 99.9}) do
    percentiles[#percentiles + 1] = string.format('"p%s": %d', tostring(p), latency:percentile(p))
  end
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f, %s}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(percentiles, ", ")
  ))
end
