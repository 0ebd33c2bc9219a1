-- KEYS[1] live binding. ARGV: 1 instance, 2 socket, 3 session id. Re-creates a binding this
-- instance still serves after Redis lost it (restart, failover); never replaces another's.
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
redis.call("HSET", KEYS[1], "instance", ARGV[1], "socket", ARGV[2], "session", ARGV[3])
return 1
