-- Live-session messages that could not be delivered. ARGV: 1 peer kind, 2 peer address ("" and
-- "": leave the binding), then pairs of message id and the visibility deadline its delivery set.
-- Each message still in flight with exactly that deadline (not taken, removed or re-delivered
-- since) becomes pending again, and the binding is dropped if it still names that peer (with
-- everything else pushed to it). Returns {released, redeliver's reply}.
local released = 0
for i = 3, #ARGV, 2 do
  local id, deadline = ARGV[i], tonumber(ARGV[i + 1])
  if inflight_with(Q, id, deadline) then
    release(Q, id, redis.call("HGET", Q.msg, id))
    released = released + 1
  end
end
if ARGV[1] ~= "" and bound_to(Q, ARGV[1], ARGV[2]) then
  unbind(Q)
  return {released, redeliver(Q, 0)}
end
return {released, no_step()}
