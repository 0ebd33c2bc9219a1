-- ARGV: 1 this instance, 2 ms without a heartbeat after which an instance is dead.
-- Returns {1 if this instance was missing (first beat, or Redis lost it), alive ids, dead ids}.
local now = now_ms()
local cutoff = now - tonumber(ARGV[2])
local added = redis.call("ZADD", Q.instances, now, ARGV[1])
local alive = redis.call("ZRANGEBYSCORE", Q.instances, "(" .. cutoff, "+inf")
local dead = redis.call("ZRANGEBYSCORE", Q.instances, "-inf", cutoff, "LIMIT", 0, 16)
return {added, alive, dead}
