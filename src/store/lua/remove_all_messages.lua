-- ARGV: 2 recipient DID ("" for every message), 3 most messages to delete one by one in this
-- call. Returns {removed, 1 if messages of the DID remain (call again) else 0, cutoff,
-- {trashed id...}}. cutoff > 0 (Redis clock, ms) when whole cold tiers went at once: the caller deletes
-- the connection's MongoDB documents received up to then.
local did, batch = ARGV[2], tonumber(ARGV[3])

-- Every message goes: UNLINK frees large queues off the main thread, so this is O(DIDs).
local function remove_everything()
  local removed = redis.call("HLEN", K_MSG)
  local had_cold = redis.call("ZCARD", K_COLD) + redis.call("ZCARD", K_INFLIGHT) > 0
  local keys = {K_MSG, K_PENDING, K_INFLIGHT, K_SEQ, K_DIDS, K_COLD}
  for _, d in ipairs(redis.call("SMEMBERS", K_DIDS)) do
    keys[#keys + 1] = lane(d, false)
    keys[#keys + 1] = lane(d, true)
    keys[#keys + 1] = inflight_key(d)
  end
  redis.call("UNLINK", unpack(keys))
  local cutoff = 0
  if had_cold then cutoff = now_ms() end
  return {removed, 0, cutoff, {}}
end

if did == "" then return remove_everything() end

-- The usual case: the connection's messages are all for this one DID.
local dids = redis.call("SMEMBERS", K_DIDS)
local function total(pending, cold, inflight)
  return redis.call("ZCARD", pending) + redis.call("ZCARD", cold) + redis.call("ZCARD", inflight)
end
if #dids == 1 and dids[1] == did
    and total(K_PENDING, K_COLD, K_INFLIGHT) == total(lane(did, false), lane(did, true), inflight_key(did)) then
  return remove_everything()
end

-- Other DIDs share the queue: delete this DID's messages one by one, a bounded batch per call
-- so that Redis is never blocked for long.
local removed = 0
local function reply(more) return {removed, more, 0, TRASHED} end
for _, key in ipairs({lane(did, false), lane(did, true), inflight_key(did)}) do
  for _, id in ipairs(redis.call("ZRANGE", key, 0, batch - removed - 1)) do
    removed = removed + delete(id)
  end
  if removed >= batch then return reply(1) end
end
redis.call("SREM", K_DIDS, did)
forget_if_empty()
return reply(0)
