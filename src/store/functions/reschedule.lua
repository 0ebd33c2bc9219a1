-- After a sweep: ARGV: 1 the claim, then pairs of connection id and its next due time (-1:
-- nothing in flight). Only entries still at the claim are changed: one rewritten meanwhile (a
-- hand-out entered the connection again) is newer than what the sweep saw.
local claim = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local score = redis.call("ZSCORE", Q.deadlines, ARGV[i])
  if score and tonumber(score) == claim then
    if tonumber(ARGV[i + 1]) < 0 then
      redis.call("ZREM", Q.deadlines, ARGV[i])
    else
      redis.call("ZADD", Q.deadlines, ARGV[i + 1], ARGV[i])
    end
  end
end
return 0
