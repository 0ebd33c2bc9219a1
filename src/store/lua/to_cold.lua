-- Mover, step 3, once MongoDB holds the documents: each message still pending in Redis becomes
-- cold (its body is dropped, it keeps its place in the queue). ARGV: 2 the mover's lease token,
-- 3 lease ms, 4.. ids. Fails with FENCED when the lease is no longer this mover's; else renews
-- it, so a long visit keeps it as long as each batch is quicker than the lease. Every id leaves
-- the move journal: the mover settles the documents of the unmovable ones itself. Returns, per
-- id: 1 moved, 2 already cold, 0 not movable now (taken, removed): its new document is garbage.
if redis.call("GET", K_MOVER) ~= ARGV[2] then return redis.error_reply("FENCED lease lost") end
redis.call("PEXPIRE", K_MOVER, tonumber(ARGV[3]))
local outcome = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  redis.call("SREM", K_MOVING, id)
  local record = redis.call("HGET", K_MSG, id)
  local result = 0
  if record then
    local seq, _, _, dids, cold, body = parse(record)
    if cold then
      result = 2
    elseif redis.call("ZSCORE", K_PENDING, id) then
      redis.call("HSET", K_MSG, id, string.sub(record, 1, body - 1))
      from_pending(id, dids, false)
      to_pending(id, seq, dids, true)
      result = 1
    end
  end
  outcome[#outcome + 1] = result
end
return outcome
