-- wrk script: GET-mode SMS callbacks with ids unique to the run, and a
-- machine-readable summary line.  Arguments: RUNID [close]
-- ("close" asks for a new connection per request: scenario S2).

local counter = 0
local prefix = "wrk"

function init(args)
  prefix = args[1] or prefix
  if args[2] == "close" then
    wrk.headers["Connection"] = "close"
  end
end

function request()
  counter = counter + 1
  return wrk.format("GET", wrk.path ..
    "?id=" .. prefix .. "-" .. counter ..
    "&from=447700900123&to=80001&date=2026-11-25+10%3A00%3A00+%2B0000" ..
    "&type=6&network=vodafone&message=Hello+%E2%82%AC+" .. counter)
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
