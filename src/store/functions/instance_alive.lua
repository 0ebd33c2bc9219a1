-- ARGV: 1 instance, 2 ms without a heartbeat after which it is dead.
-- Returns 1 if the instance heartbeated recently.
local beat = redis.call("ZSCORE", Q.instances, ARGV[1])
if beat and tonumber(beat) > now_ms() - tonumber(ARGV[2]) then return 1 end
return 0
