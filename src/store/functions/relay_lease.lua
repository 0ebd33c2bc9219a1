-- Takes the connection's relay lease for a SocketDock delivery loop, if nobody holds it.
-- ARGV: 1 token, 2 lease ms. Returns {taken, due}: due is 1 when the caller must enter the
-- connection in the deadline index at the lease's end, so that if the holder dies before its
-- first step, a sweep comes back then and another instance takes over.
if not redis.call("SET", Q.relay, ARGV[1], "NX", "PX", tonumber(ARGV[2])) then return {0, 0} end
local now = now_ms()
return {1, note_due(Q, now + tonumber(ARGV[2]), now)}
