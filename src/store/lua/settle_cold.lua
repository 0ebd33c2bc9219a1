-- Cold messages a take left in flight. ARGV: 2 "delete" or "release", 3 their deadline, 4.. ids.
-- Only messages still in flight with exactly that deadline are touched. Returns
-- {count, {trashed id...}}.
local mode, deadline = ARGV[2], tonumber(ARGV[3])
local count = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  if inflight_with(id, deadline) then
    if mode == "delete" then
      count = count + delete(id)
    else
      release(id, redis.call("HGET", K_MSG, id))
      count = count + 1
    end
  end
end
if mode == "delete" then forget_if_empty() end
return with_trashed(count)
