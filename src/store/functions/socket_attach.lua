-- Notes that a connection is bound to a SocketDock socket, so that the socket's loss ends the
-- binding. ARGV: 1 connection id, 2 most connections one socket may carry, 3 how long to
-- remember the socket (ms). Returns its send URL; fails with UNKNOWN when the socket is not
-- recorded (or forgotten), FULL when it carries the most already.
local send = redis.call("HGET", Q.socket, "send")
if not send then return redis.error_reply("UNKNOWN socket") end
if redis.call("SISMEMBER", Q.bound, ARGV[1]) == 0 and redis.call("SCARD", Q.bound) >= tonumber(ARGV[2]) then
  return redis.error_reply("FULL socket carries " .. ARGV[2] .. " connections")
end
redis.call("SADD", Q.bound, ARGV[1])
redis.call("PEXPIRE", Q.socket, tonumber(ARGV[3]))
redis.call("PEXPIRE", Q.bound, tonumber(ARGV[3]))
return send
