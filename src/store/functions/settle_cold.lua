-- Cold messages a take left in flight. ARGV: 1 "delete" or "release", 2 their deadline, 3.. ids.
-- Only messages still in flight with exactly that deadline are touched. Returns
-- {count, {trashed id...}}.
local mode, deadline = ARGV[1], tonumber(ARGV[2])
local count = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if inflight_with(Q, id, deadline) then
    if mode == "delete" then
      count = count + delete(Q, id, true)
    else
      release(Q, id, redis.call("HGET", Q.msg, id))
      count = count + 1
    end
  end
end
if mode == "delete" then forget_if_empty(Q) end
return {count, Q.trashed}
