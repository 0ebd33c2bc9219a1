-- Mover, step 1: the oldest pending messages held in Redis, received at or before a cutoff.
-- ARGV: 2 cutoff (ms), 3 most messages, 4 the last id of the mover's previous read ("": from the
-- head), so that it reads a batch in short scripts; nothing if that one is no longer pending.
-- Returns {id, record, ...}, and enters those ids in the move journal (`to_cold` takes them
-- out), so that the documents of a move cut short are found later. Changes nothing a client
-- can see: expired in-flight messages become pending (as any take would make them), and index
-- entries whose record is gone are dropped.
local cutoff, batch, after = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
requeue_expired(now_ms())
local min = "-inf"
if after ~= "" then
  local seq = redis.call("ZSCORE", K_PENDING, after)
  if not seq then return {} end
  min = "(" .. seq
end
local out = {}
for _, id in ipairs(redis.call("ZRANGE", K_PENDING, min, "+inf", "BYSCORE", "LIMIT", 0, batch)) do
  local record = redis.call("HGET", K_MSG, id)
  if record then
    local _, _, received = parse(record)
    if received > cutoff then break end
    out[#out + 1] = id
    out[#out + 1] = record
    redis.call("SADD", K_MOVING, id)
  else
    redis.call("ZREM", K_PENDING, id)
  end
end
return out
