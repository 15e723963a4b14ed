-- sluice_renew v1: keeps a running request's concurrency slots for another
-- slot lease (the heartbeat of a request in flight).
--
-- A slot is held for a short lease (ARGV[6] of admit.lua), not the whole
-- reservation lease, so that the slots of an instance that dies (SIGKILL, a
-- crash, a lost host) free within seconds; the instance renews the slots of
-- its running requests well before they lapse. A slot that lapsed anyway
-- (Redis stopped longer than the slot lease) is put back: its request is
-- still running.
--
-- KEYS[1]  the lease, sluice:{<tenant>}:l:<id> (settle.lua's header)
--
-- ARGV[1]  "s" for the server's TIME, or a client time in ms
-- ARGV[2]  the lease id (its member in concurrency sets)
--
-- Returns 1 if renewed, 0 if the reservation is over (settled, released,
-- expired, or never issued).

local lease = redis.call("GET", KEYS[1])
if not lease or lease == "x" then return 0 end

local now
if ARGV[1] == "s" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local expires, slot_ttl = string.match(lease, "^exp:(%d+):%d+:(%d+)")
expires, slot_ttl = tonumber(expires), tonumber(slot_ttl)
if not expires or now >= expires then return 0 end
local held = math.min(now + slot_ttl, expires)
for line in string.gmatch(lease, "[^\n]+") do
  local key, kind = string.match(line, "^([^|]+)|[^|]+|(%a)|")
  if kind == "n" then
    redis.call("ZADD", key, held, ARGV[2])
    if redis.call("PTTL", key) < held - now then redis.call("PEXPIRE", key, held - now) end
  end
end
return 1
