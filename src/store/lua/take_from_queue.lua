-- ARGV: 2 recipient DID ("" for all), 3 limit (>= 1), 4 byte limit, 5 "1" to delete,
-- 6 visibility timeout ms. Returns the QueuedMessage bodies, oldest first.
local did, limit, byte_limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local delete_taken, visibility = ARGV[5] == "1", tonumber(ARGV[6])
local now = now_ms()
requeue_expired(now)

local lane = K_PENDING
if did ~= "" then lane = pending_key(did) end
local taken, bytes = {}, 0
for _, id in ipairs(redis.call("ZRANGE", lane, 0, limit - 1)) do
  local record = redis.call("HGET", K_MSG, id)
  if record then
    local _, size, dids, body = parse(record)
    if bytes + size > byte_limit then break end
    bytes = bytes + size
    from_pending(id, dids)
    if delete_taken then
      redis.call("HDEL", K_MSG, id)
    else
      to_inflight(id, now + visibility, dids)
    end
    taken[#taken + 1] = string.sub(record, body)
  else
    redis.call("ZREM", lane, id)
  end
end
if delete_taken then forget_if_empty() end
return taken
