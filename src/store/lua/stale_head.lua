-- Mover, step 1: the oldest pending messages held in Redis, received at or before a cutoff.
-- ARGV: 2 cutoff (ms), 3 most messages. Returns {id, record, ...}. Changes nothing a client can
-- see: expired in-flight messages become pending (as any take would make them), and index
-- entries whose record is gone are dropped.
local cutoff, batch = tonumber(ARGV[2]), tonumber(ARGV[3])
requeue_expired(now_ms())
local out = {}
for _, id in ipairs(redis.call("ZRANGE", K_PENDING, 0, batch - 1)) do
  local record = redis.call("HGET", K_MSG, id)
  if record then
    local _, _, received = parse(record)
    if received > cutoff then break end
    out[#out + 1] = id
    out[#out + 1] = record
  else
    redis.call("ZREM", K_PENDING, id)
  end
end
return out
