-- ARGV: 1 recipient DID ("" for all), 2 limit (>= 1), 3 byte limit, 4 "1" to delete,
-- 5 visibility timeout ms, 6 "1" to leave cold messages out (MongoDB is unavailable).
-- Returns {deadline, {id, body, id, body, ...}, due}, oldest first across both tiers; due is 1
-- when the caller must enter the connection in the deadline index at `deadline`. A cold message
-- comes with an empty body and stays in flight with that deadline even when deleting: the
-- caller reads it from MongoDB, then deletes or releases it (settle_cold).
local did, limit, byte_limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local delete_taken, visibility, hot_only = ARGV[4] == "1", tonumber(ARGV[5]), ARGV[6] == "1"
if did == "" then did = nil end
local now = now_ms()
requeue_expired(Q, now)
local deadline = now + visibility

-- Both tiers' heads, merged by arrival sequence.
local hot = redis.call("ZRANGE", lane(Q, did, false), 0, limit - 1, "WITHSCORES")
local cold = {}
if not hot_only then cold = redis.call("ZRANGE", lane(Q, did, true), 0, limit - 1, "WITHSCORES") end
local taken, count, bytes, deleted_bytes, h, c, in_flight = {}, 0, 0, 0, 1, 1, false
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
  local record = redis.call("HGET", Q.msg, id)
  if record then
    local _, size, _, dids, is_cold, body = parse(record)
    if bytes + size > byte_limit then break end
    bytes = bytes + size
    count = count + 1
    from_pending(Q, id, dids, is_cold)
    if delete_taken and not is_cold then
      redis.call("HDEL", Q.msg, id)
      deleted_bytes = deleted_bytes + size
    else
      to_inflight(Q, id, deadline, dids)
      in_flight = true
    end
    taken[#taken + 1] = id
    taken[#taken + 1] = string.sub(record, body)
  else
    redis.call("ZREM", lane(Q, did, false), id)
    redis.call("ZREM", lane(Q, did, true), id)
  end
end
if delete_taken then
  count_bytes(Q, -deleted_bytes)
  forget_if_empty(Q)
end
local due = 0
if in_flight then due = note_due(Q, deadline, now) end
return {deadline, taken, due}
