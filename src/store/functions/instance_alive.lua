-- ARGV: 1 instance, 2 the caller's own silence limit (ms), for an instance that wrote none.
-- Returns 1 if the instance heartbeated within its own limit.
local beat = redis.call("ZSCORE", Q.instances, ARGV[1])
if not beat then return 0 end
local limit = tonumber(redis.call("HGET", Q.timeouts, ARGV[1])) or tonumber(ARGV[2])
if tonumber(beat) > now_ms() - limit then return 1 end
return 0
