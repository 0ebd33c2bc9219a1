-- KEYS[1] instances. ARGV: 1 instance, 2 ms without a heartbeat after which it is dead.
-- Returns 1 if the instance heartbeated recently.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local beat = redis.call("ZSCORE", KEYS[1], ARGV[1])
if beat and tonumber(beat) > now - tonumber(ARGV[2]) then return 1 end
return 0
