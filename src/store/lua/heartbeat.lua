-- KEYS[1] instances (ZSET id by last heartbeat, Redis clock ms). ARGV: 1 this instance,
-- 2 ms without a heartbeat after which an instance is dead.
-- Returns {1 if this instance was missing (first beat, or Redis lost it), alive ids, dead ids}.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[2])
local added = redis.call("ZADD", KEYS[1], now, ARGV[1])
local alive = redis.call("ZRANGEBYSCORE", KEYS[1], "(" .. cutoff, "+inf")
local dead = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", cutoff, "LIMIT", 0, 16)
return {added, alive, dead}
