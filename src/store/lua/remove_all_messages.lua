-- ARGV: 2 recipient DID ("" for every message). Returns how many were removed.
local did = ARGV[2]
if did == "" then
  local removed = redis.call("HLEN", K_MSG)
  local keys = {K_MSG, K_PENDING, K_INFLIGHT, K_SEQ, K_DIDS}
  for _, d in ipairs(redis.call("SMEMBERS", K_DIDS)) do
    keys[#keys + 1] = pending_key(d)
    keys[#keys + 1] = inflight_key(d)
  end
  -- UNLINK frees large queues off the main thread.
  redis.call("UNLINK", unpack(keys))
  return removed
end
local removed = 0
for _, lane in ipairs({pending_key(did), inflight_key(did)}) do
  for _, id in ipairs(redis.call("ZRANGE", lane, 0, -1)) do removed = removed + delete(id) end
end
redis.call("SREM", K_DIDS, did)
forget_if_empty()
return removed
