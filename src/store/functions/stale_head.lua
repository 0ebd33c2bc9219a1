-- Mover, step 1: the oldest pending messages held in Redis, received at or before a cutoff.
-- ARGV: 1 cutoff (ms), 2 most messages, 3 the last id of the mover's previous read ("": from the
-- head), so that it reads a batch in short calls; nothing if that one is no longer pending.
-- Returns {id, record, ...}, and enters those ids in the move journal (`to_cold` takes them
-- out), so that the documents of a move cut short are found later. Changes nothing a client
-- can see: expired in-flight messages become pending (as any take would make them), and index
-- entries whose record is gone are dropped.
local cutoff, batch, after = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
requeue_expired(Q, now_ms())
local min = "-inf"
if after ~= "" then
  local seq = redis.call("ZSCORE", Q.pending, after)
  if not seq then return {} end
  min = "(" .. seq
end
local out = {}
for _, id in ipairs(redis.call("ZRANGE", Q.pending, min, "+inf", "BYSCORE", "LIMIT", 0, batch)) do
  local record = redis.call("HGET", Q.msg, id)
  if record then
    local _, _, received = parse(record)
    if received > cutoff then break end
    out[#out + 1] = id
    out[#out + 1] = record
    redis.call("SADD", Q.moving, id)
  else
    redis.call("ZREM", Q.pending, id)
  end
end
return out
