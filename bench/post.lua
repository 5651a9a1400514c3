-- wrk script: POST the JSON file named by the environment variable BODY_FILE, and print
-- one JSON line of results from done(): request count, run time, latency percentiles
-- (microseconds, from wrk's own histogram), error counts, responses with a 4xx/5xx status
-- (wrk's own count: no response() callback, which would cost wrk a Lua call and a header
-- table per response and so slow the floor more than the service) and requests sent after
-- the thread's tokens ran out. bench/run.py reads that line.
--
-- With TOKENS_FILE set, every request carries its own client JWT: wrk thread n reads the
-- file TOKENS_FILE.n (one token a line, each with its own jti) in init() and sends each
-- token once, in order. The service refuses a jti it has seen, so a token is never sent
-- twice: a thread that has used all of its tokens sends the request without one (answered
-- 401, counted under "exhausted" and "non2xx"), and bench/run.py then fails the run.
local path = assert(os.getenv("BODY_FILE"), "set BODY_FILE")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

local tokens_file = os.getenv("TOKENS_FILE")
local threads = {}
exhausted = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  if tokens_file == nil then
    return
  end
  tokens = {}
  for line in assert(io.open(tokens_file .. "." .. id, "r")):lines() do
    tokens[#tokens + 1] = line
  end
  used = 0
end

if tokens_file ~= nil then
  -- Defined only with tokens: without request(), wrk sends one prebuilt request, cheaper.
  function request()
    used = used + 1
    local token = tokens[used]
    if token == nil then
      exhausted = exhausted + 1
      wrk.headers["Authorization"] = nil
    else
      wrk.headers["Authorization"] = "Bearer " .. token
    end
    return wrk.format()
  end
end

function done(summary, latency, requests)
  local out_of_tokens = 0
  for _, thread in ipairs(threads) do
    out_of_tokens = out_of_tokens + thread:get("exhausted")
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %.0f, "p95_us": %.0f, "p99_us": %.0f, "max_us": %.0f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"non2xx": %d, "exhausted": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout, e.status, out_of_tokens))
end
