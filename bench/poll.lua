-- wrk: GET /api/coupons/<name>/entries/u<n>, n cycling over the coupon's entrants (bench/admission_polls.py).
function init(args)
  name, users = args[1], tonumber(args[2])
  counter = math.random(users) -- each wrk thread starts elsewhere in the list
end

function request()
  counter = (counter + 1) % users
  return wrk.format("GET", "/api/coupons/" .. name .. "/entries/u" .. counter)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format('BENCH_RESULT {"requests": %d, "non_2xx": %d, "socket_errors": %d, "p50_ms": %.2f}\n',
    summary.requests, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1000))
end
