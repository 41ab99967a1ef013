-- wrk script of the exchange benchmark: POST one JSON body with fixed headers,
-- then print the results as one JSON line for bench/exchange.py.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/post.lua URL -- BODY_FILE HEADERS_FILE [count-answers]
--
-- BODY_FILE holds the exact request body. HEADERS_FILE holds one "Name: value"
-- per line (the client's Authorization, X-Purpose and X-End-User for the
-- gateway); Content-Type is application/json unless a line sets it. The request
-- is built once per thread in init(), so wrk sends it without calling Lua per
-- request and the load generator stays cheap. With "count-answers", every
-- answer is counted by status and problem name (one Lua call per answer).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local common = require("common")

setup = common.setup
done = common.done

function init(args)
  wrk.method = "POST"
  wrk.body = common.read_file(args[1])
  wrk.headers["Content-Type"] = "application/json"
  if args[2] then
    for line in common.read_file(args[2]):gmatch("[^\r\n]+") do
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then
        wrk.headers[name] = value
      end
    end
  end
  if args[3] == "count-answers" then
    response = common.count -- wrk checks for response() after init()
  end
end
