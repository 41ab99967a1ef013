-- Shared by the exchange benchmark's wrk scripts (post.lua, requests.lua):
-- reading a file, counting answers by status and problem, and printing wrk's
-- results as one JSON line for bench/loadgen.py.
--
-- A script loads it from its own folder with
--   local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
--   package.path = here .. "?.lua;" .. package.path
--   local common = require("common")
--
-- Counters live in globals of each thread's Lua state (answers, handed_out,
-- exhausted); done() runs in wrk's main state and reads them through the
-- thread objects setup() kept.

local common = {}
local threads = {}

function common.read_file(path)
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  return data
end

-- setup(thread), in wrk's main state: remember each thread for done().
function common.setup(thread)
  threads[#threads + 1] = thread
end

-- response(status, headers, body): count the answer as "200", or as status and
-- problem name for a refusal ("503 overloaded", "409 replay"), from the
-- problem document's type URI.
function common.count(status, headers, body)
  local key = tostring(status)
  if status ~= 200 then
    local problem = body:match('"type"%s*:%s*"[^"]-([%w%-]+)"')
    if problem then
      key = key .. " " .. problem
    end
  end
  answers = answers or {}
  answers[key] = (answers[key] or 0) + 1
end

local function json_counts(counts)
  local members = {}
  for key, count in pairs(counts) do
    members[#members + 1] = string.format('"%s": %d', key, count)
  end
  table.sort(members)
  return "{" .. table.concat(members, ", ") .. "}"
end

-- done(summary, latency, requests): print the results, with every thread's
-- counters summed, as one line starting with BENCH-JSON.
function common.done(summary, latency, requests)
  local counts, handed, exhausted = {}, 0, false
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("answers") or {}) do
      counts[key] = (counts[key] or 0) + count
    end
    handed = handed + (thread:get("handed_out") or 0)
    exhausted = exhausted or thread:get("exhausted") == true
  end
  local errors = summary.errors
  local percentiles = {}
  for _, p in ipairs({50, 75, 90, 99, 99.9}) do
    percentiles[#percentiles + 1] = string.format('"p%s": %d', tostring(p), latency:percentile(p))
  end
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f, %s}, '
      .. '"answers": %s, "handed_out": %d, "exhausted": %s}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(percentiles, ", "),
    json_counts(counts), handed, tostring(exhausted)
  ))
end

return common
