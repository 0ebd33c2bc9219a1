-- ARGV: 1.. message ids. Returns {how many existed and were removed, {trashed id...}, resume}:
-- resume is 1 when the connection's recipient acknowledges deliveries to a SocketDock socket
-- (`ack`) and messages wait: room was made in its window, so its delivery loop goes on.
local removed = 0
for i = 1, #ARGV do removed = removed + delete(Q, ARGV[i]) end
forget_if_empty(Q)
local resume = 0
if removed > 0 then
  local conn = redis.call("HMGET", Q.conn, "kind", "ack")
  if conn[1] == RELAY_KIND and conn[2] and redis.call("ZCARD", Q.pending) + redis.call("ZCARD", Q.cold) > 0 then
    resume = 1
  end
end
return {removed, Q.trashed, resume}
