-- ARGV: 2 recipient DID ("" for all), 3 limit (>= 1), 4 byte limit, 5 "1" to delete,
-- 6 visibility timeout ms, 7 "1" to leave cold messages out (MongoDB is unavailable).
-- Returns {deadline, {id, body, id, body, ...}}, oldest first across both tiers. A cold message
-- comes with an empty body and stays in flight with that deadline even when deleting: the
-- caller reads it from MongoDB, then deletes or releases it (settle_cold).
local did, limit, byte_limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local delete_taken, visibility, hot_only = ARGV[5] == "1", tonumber(ARGV[6]), ARGV[7] == "1"
if did == "" then did = nil end
local now = now_ms()
requeue_expired(now)
local deadline = now + visibility

-- Both tiers' heads, merged by arrival sequence.
local hot = redis.call("ZRANGE", lane(did, false), 0, limit - 1, "WITHSCORES")
local cold = {}
if not hot_only then cold = redis.call("ZRANGE", lane(did, true), 0, limit - 1, "WITHSCORES") end
local taken, count, bytes, h, c = {}, 0, 0, 1, 1
while count < limit do
  local id
  if h < #hot and (c >= #cold or tonumber(hot[h + 1]) <= tonumber(cold[c + 1])) then
    id = hot[h]
    h = h + 2
  elseif c < #cold then
    id = cold[c]
    c = c + 2
  else
    break
  end
  local record = redis.call("HGET", K_MSG, id)
  if record then
    local _, size, _, dids, is_cold, body = parse(record)
    if bytes + size > byte_limit then break end
    bytes = bytes + size
    count = count + 1
    from_pending(id, dids, is_cold)
    if delete_taken and not is_cold then
      redis.call("HDEL", K_MSG, id)
    else
      to_inflight(id, deadline, dids)
    end
    taken[#taken + 1] = id
    taken[#taken + 1] = string.sub(record, body)
  else
    redis.call("ZREM", lane(did, false), id)
    redis.call("ZREM", lane(did, true), id)
  end
end
if delete_taken then forget_if_empty() end
return {deadline, taken}
