-- ARGV: 1 recipient DID ("" for every message), 2 most messages to delete one by one in this
-- call. Returns {removed, 1 if messages of the DID remain (call again) else 0, cutoff,
-- {trashed id...}}. cutoff > 0 (Redis clock, ms) when whole cold tiers went at once: the caller
-- deletes the connection's MongoDB documents received up to then.
local did, batch = ARGV[1], tonumber(ARGV[2])

-- Every message goes: UNLINK frees large queues off the main thread, so this is O(DIDs).
local function remove_everything()
  local removed = redis.call("HLEN", Q.msg)
  local had_cold = redis.call("ZCARD", Q.cold) + redis.call("ZCARD", Q.inflight) > 0
  local keys = {Q.msg, Q.pending, Q.inflight, Q.seq, Q.cold}
  local dids = dids_of(Q)
  for _, d in ipairs(dids) do
    keys[#keys + 1] = lane(Q, d, false)
    keys[#keys + 1] = lane(Q, d, true)
    keys[#keys + 1] = inflight_key(Q, d)
  end
  redis.call("UNLINK", unpack(keys))
  forget_dids(Q, dids)
  redis.call("HDEL", Q.conn, "bytes")
  -- (Its ids are not remembered one by one: an add settled meanwhile answers "unknown".)
  local now = now_ms()
  redis.call("HSET", Q.conn, "cleared", now)
  local cutoff = 0
  if had_cold then cutoff = now end
  return {removed, 0, cutoff, {}}
end

if did == "" then return remove_everything() end

-- The usual case: the connection's messages are all for this one DID.
local dids = dids_of(Q)
local function total(pending, cold, inflight)
  return redis.call("ZCARD", pending) + redis.call("ZCARD", cold) + redis.call("ZCARD", inflight)
end
if #dids == 1 and dids[1] == did
    and total(Q.pending, Q.cold, Q.inflight) == total(lane(Q, did, false), lane(Q, did, true), inflight_key(Q, did)) then
  return remove_everything()
end

-- Other DIDs share the queue: delete this DID's messages one by one, a bounded batch per call
-- so that Redis is never blocked for long.
local removed = 0
local function reply(more) return {removed, more, 0, Q.trashed} end
for _, key in ipairs({lane(Q, did, false), lane(Q, did, true), inflight_key(Q, did)}) do
  for _, id in ipairs(redis.call("ZRANGE", key, 0, batch - removed - 1)) do
    removed = removed + delete(Q, id)
  end
  if removed >= batch then return reply(1) end
end
forget_dids(Q, {did})
forget_if_empty(Q)
return reply(0)
