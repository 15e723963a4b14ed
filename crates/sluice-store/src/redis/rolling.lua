-- sluice_rolling v1: shared by admit.lua and settle.lua, which Sluice sends
-- with this file in front of them (redis/mod.rs).
--
-- The debt of a rolling (GCRA) counter's state `s` ("r:<debt>:<at>", both
-- in ms scaled by the amount; nil or anything else: no debt) seen from
-- `now`: what `amount` per ms has paid off since `at`, never below 0. A
-- `now` before the state's time (a client clock behind another's, or
-- requests reaching Redis out of order) sees a larger debt: keeping the
-- stored debt would move the theoretical arrival time back and admit more
-- than the limit.
local function rolling_debt(s, now, amount)
  if not s then return 0 end
  local a, at = string.match(s, "^r:(%d+):(%d+)$")
  a, at = tonumber(a), tonumber(at)
  if not a then return 0 end
  local ahead = a - (now - at) * amount
  if ahead < 0 then ahead = 0 end
  return ahead
end

