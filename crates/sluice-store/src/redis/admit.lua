-- sluice_admit v2: all-or-nothing admission of one request, in one call.
--
-- The arithmetic is the engine's (sluice-core/src/counter.rs), in
-- milliseconds: Lua numbers are doubles, exact for integers below 2^53.
-- All keys of one call carry the tenant's hash tag, so they share a slot.
--
-- KEYS[1]      the lease (reservation) to create if admitted: a string key,
--              sluice:{<tenant>}:l:<id>
-- KEYS[2..]    the counter keys the charges refer to: group hashes
--              (sluice:{<tenant>}:g:<group>, one field per counter) and
--              concurrency sets (sluice:{<tenant>}:n:<group><counter>, a
--              sorted set of lease ids scored by the slot's expiry)
--
-- ARGV[1]      "s" to read the time from the server (TIME), or a client
--              time in ms (tests drive a fake clock this way)
-- ARGV[2]      lease time to live, ms
-- ARGV[3]      "a" to admit, "p" to peek (decide, write nothing)
-- ARGV[4]      the lease id (the member added to concurrency sets)
-- ARGV[5]      the deadline: past this time (in microseconds, on the clock
--              of ARGV[1]) the script does nothing, or "-" for none
-- ARGV[6]      slot time to live, ms: how long a concurrency slot is held
--              unless renewed (renew.lua)
-- ARGV[7]      n, the number of charges; then 10 values per charge i,
--              starting at ARGV[8 + 10*(i-1)]:
--   +0 index into KEYS of the counter's key
--   +1 the counter's field in its group hash
--   +2 kind: "r" rolling, "c" calendar, "n" concurrent
--   +3 cost of this request
--   +4 amount (after overrides)
--   +5 r: burst            c: slot start, ms      n: 0
--   +6 r: period, ms       c: slot end, ms        n: 0
--   +7 r: 0                c: next slot end, ms   n: 0
--   +8 "s" shadow (reported, never denies) or "-"
--   +9 the metric: requests, tokens, input_tokens, output_tokens, concurrent,
--      or cost:<input>:<cached input>:<output> (a cost charge and the price
--      it is settled at, in pico-units per token)
--
-- Returns { outcome, denied, retry_at, now, now_us, then per charge:
--           verdict, used, remaining, reset, wait } where outcome is 0
--           admitted, 1 limited, 2 too large, 3 late (past the deadline:
--           nothing done, no charges listed), 4 admitted before (the lease
--           exists: a retried or duplicated call; nothing charged again, the
--           counters shown as they are); denied is the 1-based charge that
--           decided (0 if admitted); now_us is the time in microseconds (the
--           caller learns the server's clock from it); verdict 0 fits, 1
--           wait, 2 never; reset is -1 when there is none; wait is when a
--           waiting charge would fit (0 else).
--
-- Why a deadline, and why in the server's time. The caller gives up on a
-- call after its timeout and answers by its failure policy; the call may
-- still be queued (in a socket, in a stopped or busy server) and run later.
-- Run then, it would charge a request nobody was told was admitted through
-- Redis, and hold its concurrency slot. So the caller sends the moment it
-- gives up, converted to the server's clock, and a late call does nothing.
-- The caller's and the server's clocks differ (different hosts, and Redis
-- reads the wall clock, which NTP may step). The caller does not trust the
-- two to agree: it learns the server's clock from replies. A reply read at
-- local (monotonic) time r carries the server's time S, taken while the
-- script ran, so before r: S - r is a lower bound of (server clock - local
-- clock). The deadline sent is the local give-up time plus the largest such
-- bound of the last seconds, less 1 ms: a time the server's clock reaches
-- no later than the caller gives up, whatever the skew. An estimate that is
-- too low only makes a call that was nearly late count as late (the caller
-- falls back for that request); too high (the server's clock stepped back
-- since) is covered by the caller's compensation: on giving up it queues a
-- refund of the reservation, which runs after this call on the same
-- connection and undoes it if it ran (settle.lua; a no-op if it did not).
local now, now_us
if ARGV[1] == "s" then
  local t = redis.call("TIME")
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  now = math.floor(now_us / 1000)
else
  now = tonumber(ARGV[1])
  now_us = now * 1000
end
local lease_ttl = tonumber(ARGV[2])
local peek = ARGV[3] == "p"
local lease_id = ARGV[4]
local deadline = ARGV[5]
local slot_ttl = tonumber(ARGV[6])
local n = tonumber(ARGV[7])

-- Late: the caller has given up (see the header). Nothing is read or written.
if not peek and deadline ~= "-" and now_us > tonumber(deadline) then
  return { 3, 0, 0, now, now_us }
end
-- Admitted before under this id (a retry, or a duplicate): charge nothing
-- again; report the counters as they are.
local again = false
if not peek and redis.call("EXISTS", KEYS[1]) == 1 then
  again = true
  peek = true
end

local function ceil_div(a, b) return math.floor((a + b - 1) / b) end

local checks = {}
local outcome, denied, retry_at = 0, 0, 0
local never = 0
for i = 1, n do
  local b = 8 + 10 * (i - 1)
  local key = KEYS[tonumber(ARGV[b])]
  local field = ARGV[b + 1]
  local kind = ARGV[b + 2]
  local cost = tonumber(ARGV[b + 3])
  local amount = tonumber(ARGV[b + 4])
  local p1, p2, p3 = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7])
  local shadow = ARGV[b + 8] == "s"
  local c = { key = key, field = field, kind = kind, cost = cost, shadow = shadow }
  if kind == "r" then
    local burst, period = p1, p2
    -- The debt seen from now (rolling.lua).
    local ahead = rolling_debt(redis.call("HGET", key, field), now, amount)
    local cap = burst * period
    local nxt = ahead + cost * period
    if cost > burst then c.verdict = 2
    elseif nxt <= cap then c.verdict = 0
    else c.verdict = 1; c.wait = now + ceil_div(nxt - cap, amount) end
    local function show(x)
      local rem = math.floor((cap - x) / period)
      if rem < 0 then rem = 0 end
      return { ceil_div(x, period), rem, now + ceil_div(x, amount) }
    end
    c.before, c.after = show(ahead), show(nxt)
    c.state = "r:" .. string.format("%d", nxt) .. ":" .. string.format("%d", now)
    c.ttl = ceil_div(nxt, amount) + 1000
    c.state_end = 0
  elseif kind == "c" then
    local start, slot_end, next_end = p1, p2, p3
    if now >= slot_end then slot_end = next_end end
    local used = 0
    local s = redis.call("HGET", key, field)
    if s then
      local e, u = string.match(s, "^c:(%d+):(%d+)$")
      e, u = tonumber(e), tonumber(u)
      -- A state from a later slot means a clock stepped back: keep counting
      -- into that slot.
      if e and e >= slot_end then slot_end = e; used = u end
    end
    local after = used + cost
    if cost > amount then c.verdict = 2
    elseif after <= amount then c.verdict = 0
    else c.verdict = 1; c.wait = slot_end end
    local function show(x)
      local rem = amount - x
      if rem < 0 then rem = 0 end
      return { x, rem, slot_end }
    end
    c.before, c.after = show(used), show(after)
    c.state = "c:" .. string.format("%d", slot_end) .. ":" .. string.format("%d", after)
    c.ttl = slot_end - now + 60000
    c.state_end = slot_end
  else
    redis.call("ZREMRANGEBYSCORE", key, "-inf", now)
    local in_flight = redis.call("ZCARD", key)
    local after = in_flight + cost
    if cost > amount then c.verdict = 2
    elseif after <= amount then c.verdict = 0
    else c.verdict = 1; c.wait = now + 1000 end
    local function show(x)
      local rem = amount - x
      if rem < 0 then rem = 0 end
      return { x, rem, -1 }
    end
    c.before, c.after = show(in_flight), show(after)
    c.state_end = 0
  end
  checks[i] = c
  if not shadow then
    if c.verdict == 2 then
      if never == 0 then never = i end
    elseif c.verdict == 1 then
      if c.wait > retry_at then retry_at = c.wait; denied = i end
    end
  end
end

if never > 0 then outcome = 2; denied = never; retry_at = 0
elseif denied > 0 then outcome = 1 end

if outcome == 0 and not peek then
  local lease = {}
  for i = 1, n do
    local c = checks[i]
    if c.verdict == 0 then
      if c.kind == "n" then
        redis.call("ZADD", c.key, now + slot_ttl, lease_id)
        local pttl = redis.call("PTTL", c.key)
        if pttl < slot_ttl then redis.call("PEXPIRE", c.key, slot_ttl) end
      else
        redis.call("HSET", c.key, c.field, c.state)
        local pttl = redis.call("PTTL", c.key)
        if pttl < c.ttl then redis.call("PEXPIRE", c.key, c.ttl) end
      end
      -- What settlement needs: key, field, kind, charged, the charge's
      -- period (rolling) or slot end (calendar), amount, metric.
      local b = 8 + 10 * (i - 1)
      local extra = ARGV[b + 6]
      if c.kind == "c" then extra = string.format("%d", c.state_end) end
      lease[#lease + 1] = table.concat({ c.key, c.field, c.kind, ARGV[b + 3], extra, ARGV[b + 4], ARGV[b + 9] }, "|")
    end
  end
  if #lease > 0 then
    -- The first line is the lease's expiry on the clock in use, so that a
    -- client clock (tests) expires it too, and the deadline (0: none), until
    -- which a settlement leaves a mark (settle.lua).
    local dl = 0
    if deadline ~= "-" then dl = tonumber(deadline) end
    table.insert(lease, 1, "exp:" .. string.format("%d", now + lease_ttl) .. ":" .. string.format("%d", dl) .. ":" .. string.format("%d", slot_ttl))
    redis.call("SET", KEYS[1], table.concat(lease, "\n"), "PX", lease_ttl)
  end
end

-- The state after this request where it was charged, before it elsewhere
-- (a denied request charges nothing, on any limit).
if again then outcome = 4; denied = 0; retry_at = 0 end
local out = { outcome, denied, retry_at, now, now_us }
for i = 1, n do
  local c = checks[i]
  local shown = c.before
  if outcome == 0 and c.verdict == 0 then shown = c.after end
  -- Admitted before: every charge that counts fitted then.
  if again and not c.shadow then out[#out + 1] = 0 else out[#out + 1] = c.verdict end
  out[#out + 1] = shown[1]
  out[#out + 1] = shown[2]
  out[#out + 1] = shown[3]
  out[#out + 1] = c.wait or 0
end
return out
