-- The deadline index, one shard: connections whose earliest in-flight deadline passed. ARGV:
-- 1 most connections, 2 how long the claim holds (ms). Each is moved to the claim time (an odd
-- half millisecond, which no deadline is), so a sweeper that dies mid-way leaves it to be found
-- again then, and `reschedule` can tell whether anyone wrote the entry since.
-- Returns {claim, {connection id...}}.
local now = now_ms()
local claim = string.format("%.1f", now + tonumber(ARGV[2]) + 0.5)
local ids = redis.call("ZRANGE", Q.deadlines, "-inf", now, "BYSCORE", "LIMIT", 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do redis.call("ZADD", Q.deadlines, claim, id) end
return {claim, ids}
