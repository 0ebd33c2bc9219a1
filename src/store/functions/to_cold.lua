-- Mover, step 3, once MongoDB holds the documents: each message still pending in Redis becomes
-- cold (its body is dropped, it keeps its place in the queue). ARGV: 1 the mover's lease token,
-- 2 lease ms, 3.. ids. Fails with FENCED when the lease is no longer this mover's; else renews
-- it, so a long visit keeps it as long as each batch is quicker than the lease. Every id leaves
-- the move journal: the mover settles the documents of the unmovable ones itself. Returns, per
-- id: 1 moved, 2 already cold, 0 not movable now (taken, removed): its new document is garbage.
if redis.call("GET", Q.mover) ~= ARGV[1] then return redis.error_reply("FENCED lease lost") end
redis.call("PEXPIRE", Q.mover, tonumber(ARGV[2]))
local outcome = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  redis.call("SREM", Q.moving, id)
  local record = redis.call("HGET", Q.msg, id)
  local result = 0
  if record then
    local seq, _, _, dids, cold, body = parse(record)
    if cold then
      result = 2
    elseif redis.call("ZSCORE", Q.pending, id) then
      redis.call("HSET", Q.msg, id, string.sub(record, 1, body - 1))
      from_pending(Q, id, dids, false)
      to_pending(Q, id, seq, dids, true)
      result = 1
    end
  end
  outcome[#outcome + 1] = result
end
return outcome
