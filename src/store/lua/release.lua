-- Live-session messages that could not be delivered. ARGV: 2 instance, 3 socket, then pairs of
-- message id and the visibility deadline its event set. Each message still in flight with
-- exactly that deadline (not taken, removed or re-delivered since) becomes pending again, and
-- the binding is dropped if it still names that socket. Returns how many were released.
local instance, socket = ARGV[2], ARGV[3]
local released = 0
for i = 4, #ARGV, 2 do
  local id, deadline = ARGV[i], tonumber(ARGV[i + 1])
  if inflight_with(id, deadline) then
    release(id, redis.call("HGET", K_MSG, id))
    released = released + 1
  end
end
local live = redis.call("HMGET", K_LIVE, "instance", "socket")
if live[1] == instance and live[2] == socket then redis.call("DEL", K_LIVE) end
return released
