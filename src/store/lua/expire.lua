-- Retention: deletes pending messages (both tiers) received at or before a cutoff, oldest
-- first. ARGV: 2 cutoff (ms), 3 most messages. Returns {deleted, {trashed id...}}.
local cutoff, batch = tonumber(ARGV[2]), tonumber(ARGV[3])
local deleted = 0
for _, key in ipairs({K_PENDING, K_COLD}) do
  if deleted >= batch then break end
  for _, id in ipairs(redis.call("ZRANGE", key, 0, batch - deleted - 1)) do
    local record = redis.call("HGET", K_MSG, id)
    if record then
      local _, _, received = parse(record)
      if received > cutoff then break end
    end
    deleted = deleted + delete(id)
    if not record then redis.call("ZREM", key, id) end
  end
end
forget_if_empty()
return with_trashed(deleted)
