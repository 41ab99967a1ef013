-- wrk script of the exchange benchmark: send pre-built exchange requests to a
-- provider gateway, each exactly once, then print the results as one JSON line.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/requests.lua URL -- REQUESTS_FILE
--
-- REQUESTS_FILE holds one request per line: the access token and the JWE
-- body, separated by one space (bench/sealed.py writes it). Each request()
-- hands out the next line as POST URL with "Authorization: Bearer TOKEN" and
-- "Content-Type: application/jose"; a line is never sent twice, since the
-- provider refuses a replayed jti (409 replay). When the file is exhausted the
-- thread stops and "exhausted" is true: wrk still divides by the whole
-- duration, so such a run is not valid (the benchmark repeats it with more).
-- Use one thread (-t1): each thread reads the file from its start.
--
-- wrk calls request() once before the run to check the script; that line is
-- handed out but never sent. Every answer is counted by status and problem.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local common = require("common")

setup = common.setup
done = common.done
response = common.count

local file
local headers = { ["Content-Type"] = "application/jose" }
handed_out = 0
exhausted = false

function init(args)
  file = assert(io.open(args[1], "rb"))
end

function request()
  local line = file:read("*l")
  local token, body = nil, nil
  if line then
    token, body = line:match("^(%S+) (%S+)$")
  end
  if not body then
    exhausted = true
    wrk.thread:stop()
    return wrk.format("GET", "/healthz", {}, nil)
  end
  handed_out = handed_out + 1
  headers["Authorization"] = "Bearer " .. token
  return wrk.format("POST", nil, headers, body)
end
