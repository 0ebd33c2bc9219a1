-- Retention: deletes pending messages (both tiers) received at or before a cutoff, oldest
-- first. ARGV: 1 cutoff (ms), 2 most messages. Returns {deleted, {trashed id...}}.
local cutoff, batch = tonumber(ARGV[1]), tonumber(ARGV[2])
local deleted = 0
for _, key in ipairs({Q.pending, Q.cold}) do
  if deleted >= batch then break end
  for _, id in ipairs(redis.call("ZRANGE", key, 0, batch - deleted - 1)) do
    local record = redis.call("HGET", Q.msg, id)
    if record then
      local _, _, received = parse(record)
      if received > cutoff then break end
    end
    deleted = deleted + delete(Q, id)
    if not record then redis.call("ZREM", key, id) end
  end
end
forget_if_empty(Q)
return {deleted, Q.trashed}
