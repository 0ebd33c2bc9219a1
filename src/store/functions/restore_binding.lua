-- ARGV: 1 peer kind, 2 peer address, 3 session id. Re-creates a binding this instance still
-- serves after Redis lost it (restart, failover); never replaces another's.
if redis.call("HEXISTS", Q.conn, "kind") == 1 then return 0 end
redis.call("HSET", Q.conn, "kind", ARGV[1], "peer", ARGV[2], "session", ARGV[3])
return 1
