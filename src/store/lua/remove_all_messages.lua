-- ARGV: 2 recipient DID ("" for every message), 3 most messages to delete one by one in this
-- call. Returns {removed, 1 if messages of the DID remain (call again) else 0}.
local did, batch = ARGV[2], tonumber(ARGV[3])

-- Every message goes: UNLINK frees large queues off the main thread, so this is O(DIDs).
local function remove_everything()
  local removed = redis.call("HLEN", K_MSG)
  local keys = {K_MSG, K_PENDING, K_INFLIGHT, K_SEQ, K_DIDS}
  for _, d in ipairs(redis.call("SMEMBERS", K_DIDS)) do
    keys[#keys + 1] = pending_key(d)
    keys[#keys + 1] = inflight_key(d)
  end
  redis.call("UNLINK", unpack(keys))
  return removed
end

if did == "" then return {remove_everything(), 0} end

-- The usual case: the connection's messages are all for this one DID.
local dids = redis.call("SMEMBERS", K_DIDS)
if #dids == 1 and dids[1] == did and redis.call("ZCARD", K_PENDING) + redis.call("ZCARD", K_INFLIGHT)
    == redis.call("ZCARD", pending_key(did)) + redis.call("ZCARD", inflight_key(did)) then
  return {remove_everything(), 0}
end

-- Other DIDs share the queue: delete this DID's messages one by one, a bounded batch per call
-- so that Redis is never blocked for long.
local removed = 0
for _, lane in ipairs({pending_key(did), inflight_key(did)}) do
  for _, id in ipairs(redis.call("ZRANGE", lane, 0, batch - removed - 1)) do
    removed = removed + delete(id)
  end
  if removed >= batch then return {removed, 1} end
end
redis.call("SREM", K_DIDS, did)
forget_if_empty()
return {removed, 0}
