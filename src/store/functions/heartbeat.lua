-- ARGV: 1 this instance, 2 ms it may stay silent before the others take it for dead (its own).
-- Each instance is judged by the limit it wrote itself (`timeouts`), so instances configured
-- with different LIVENESS_TIMEOUT_MS never take a live one for dead; one that never wrote its
-- own (an older version) is judged by the caller's.
-- Returns {1 if this instance was missing (first beat, or Redis lost it), alive ids, dead ids}.
local me, own = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local added = redis.call("ZADD", Q.instances, now, me)
redis.call("HSET", Q.timeouts, me, own)
-- Newest beats first: the set holds the running instances and the dead ones not yet taken
-- over, and past this many the oldest wait for later beats.
local beats = redis.call("ZRANGE", Q.instances, 0, MOST_INSTANCES - 1, "REV", "WITHSCORES")
local ids = {}
for i = 1, #beats, 2 do ids[#ids + 1] = beats[i] end
local limits = redis.call("HMGET", Q.timeouts, unpack(ids))
local alive, dead = {}, {}
for i, id in ipairs(ids) do
  if tonumber(beats[2 * i]) > now - (tonumber(limits[i]) or own) then
    alive[#alive + 1] = id
  elseif #dead < 16 then
    dead[#dead + 1] = id
  end
end
return {added, alive, dead}
