-- wrk script for the flash-sale benchmark (bench/flashsale.py drives it).
--   wrk ... -s bench/claim.lua URL -- MODE TAG TARGET [POOL]
-- MODE "claim": POST /api/coupons/claim, cycling over the comma-separated
--   coupon names in TARGET; every request a new user, unless POOL > 0, in
--   which case users are drawn from a pool of POOL ids (repeat claimers).
-- MODE "get": GET the path TARGET.
-- MODE "post": POST the JSON body given after TARGET (in POOL's place) to the path TARGET.
-- Counts status codes per thread and prints one BENCH_RESULT JSON line.

local threads = {}

function setup(thread)
  thread:set("thread_number", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  mode, tag, target, pool = args[1], args[2], args[3], tonumber(args[4] or "0")
  coupons = {}
  for name in string.gmatch(target, "[^,]+") do
    table.insert(coupons, name)
  end
  counter = 0
  statuses = {}
  if mode == "get" then
    fixed_request = wrk.format("GET", target)
  elseif mode == "post" then
    fixed_request = wrk.format("POST", target, {["Content-Type"] = "application/json"}, args[4])
  end
end

function request()
  if fixed_request then
    return fixed_request
  end
  counter = counter + 1
  local coupon = coupons[(counter % #coupons) + 1]
  local user
  if pool > 0 then
    user = "dip-" .. tag .. "-" .. ((counter * 7919 + thread_number) % pool)
  else
    user = "u-" .. tag .. "-" .. thread_number .. "-" .. counter
  end
  local body = '{"user_id":"' .. user .. '","coupon_name":"' .. coupon .. '"}'
  return wrk.format("POST", "/api/coupons/claim", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses")) do
      totals[code] = (totals[code] or 0) + count
    end
  end
  local parts = {}
  for code, count in pairs(totals) do
    table.insert(parts, string.format('"%d": %d', code, count))
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "statuses": {%s}, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, table.concat(parts, ", "),
    errors.connect, errors.read, errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
