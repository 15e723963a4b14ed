-- sluice_settle v2: settles (or releases) one reservation, once.
--
-- KEYS[1]  the lease, sluice:{<tenant>}:l:<id>: a line
--          "exp:<expiry ms>:<admission deadline us>:<slot ttl ms>", then
--          one line per charge,
--          "key|field|kind|charged|extra|amount|metric" where extra is the
--          period in ms (rolling) or the end of the slot charged (calendar),
--          amount the limit's amount at admission, metric as admit.lua
--          was given it (`cost:<input>:<cached>:<output>` carries the price
--          of a cost charge, in pico-units per token; a trailing `!` marks
--          a hard limit's charge, never settled above what it charged). Every
--          key in it carries the same hash tag as the lease.
--
-- ARGV[1]  "s" for the server's TIME, or a client time in ms
-- ARGV[2]  "settle" (apply the real usage) or "release" (free concurrency
--          only; token charges stay as reserved)
-- ARGV[3]  the lease id (its member in concurrency sets)
-- ARGV[4]  requests used (1, or 0 to refund the request)
-- ARGV[5]  input tokens used
-- ARGV[6]  output tokens used
-- ARGV[7]  input tokens billed (cached ones included)
-- ARGV[8]  of those, read from a cache
-- ARGV[9]  output tokens billed
--
-- Returns 1 if settled now, 0 if there was nothing to settle (already
-- settled, released, expired, or never issued).
--
-- Until the admission's deadline has passed, a settled lease leaves a mark
-- ("x") instead of nothing, so that a duplicate of the admission arriving
-- after this settlement (and before its deadline) finds the lease taken and
-- charges nothing (admit.lua). The mark lives until that deadline: at most
-- the caller's timeout after the admission (a request quicker than that
-- leaves one, as small as the lease it replaces). Settled later, the lease
-- is simply deleted.

local lease = redis.call("GET", KEYS[1])
if not lease or lease == "x" then return 0 end

local now, now_us
if ARGV[1] == "s" then
  local t = redis.call("TIME")
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  now = math.floor(now_us / 1000)
else
  now = tonumber(ARGV[1])
  now_us = now * 1000
end
local deadline = tonumber(string.match(lease, "^exp:%d+:(%d+)")) or 0
if now_us < deadline then
  redis.call("SET", KEYS[1], "x", "PX", math.floor((deadline - now_us) / 1000) + 1)
else
  redis.call("DEL", KEYS[1])
end
-- Expired (its key's TTL runs on the server's clock; this on the clock in
-- use): the charge stays as reserved; concurrency has expired by score.
local expires = tonumber(string.match(lease, "^exp:(%d+)"))
if expires and now >= expires then return 0 end
local release = ARGV[2] == "release"
local lease_id = ARGV[3]
local requests, input, output = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local b_input, b_cached, b_output = tonumber(ARGV[7]) or 0, tonumber(ARGV[8]) or 0, tonumber(ARGV[9]) or 0

-- What a cost charge really cost, in micro-units rounded up once, as
-- sluice-core's Price::micros: pico-units summed exactly while below 2^53
-- (a request's input and output at up to $9,000), then divided.
local function cost(pi, pc, po)
  local pico = (b_input - b_cached) * pi + b_cached * pc + b_output * po
  return math.floor((pico + 999999) / 1000000)
end

local function actual(metric)
  if metric == "requests" then return requests end
  if metric == "tokens" then return input + output end
  if metric == "input_tokens" then return input end
  if metric == "output_tokens" then return output end
  local pi, pc, po = string.match(metric, "^cost:(%d+):(%d+):(%d+)$")
  if pi then return cost(tonumber(pi), tonumber(pc), tonumber(po)) end
  return 0
end

for line in string.gmatch(lease, "[^\n]+") do
  local key, field, kind, charged, extra, amount, metric =
    string.match(line, "^([^|]+)|([^|]+)|(%a)|(%d+)|(%d+)|(%d+)|(%a[%w_:]*!?)$")
  charged, extra, amount = tonumber(charged), tonumber(extra), tonumber(amount)
  if kind == "n" then
    redis.call("ZREM", key, lease_id)
  elseif key and not release then
    local used
    if string.sub(metric, -1) == "!" then
      -- A hard limit: never settled above what was charged.
      used = actual(string.sub(metric, 1, -2))
      if used > charged then used = charged end
    else
      used = actual(metric)
    end
    local delta = used - charged
    local s = redis.call("HGET", key, field)
    if kind == "r" then
      local period = extra
      -- Seen from `now`, before or after the state's time (rolling.lua).
      local ahead = rolling_debt(s, now, amount) + delta * period
      if ahead < 0 then ahead = 0 end
      redis.call("HSET", key, field, "r:" .. string.format("%d", ahead) .. ":" .. string.format("%d", now))
      local ttl = math.floor((ahead + amount - 1) / amount) + 1000
      if redis.call("PTTL", key) < ttl then redis.call("PEXPIRE", key, ttl) end
    elseif kind == "c" and s then
      local e, u = string.match(s, "^c:(%d+):(%d+)$")
      e, u = tonumber(e), tonumber(u)
      -- Refunds go back to the slot charged (lost if it is over); overage
      -- is debt, carried into the slot now counting.
      if e == extra or (e and e > extra and delta > 0) then
        u = u + delta
        if u < 0 then u = 0 end
        redis.call("HSET", key, field, "c:" .. string.format("%d", e) .. ":" .. string.format("%d", u))
      end
    end
  end
end
return 1
