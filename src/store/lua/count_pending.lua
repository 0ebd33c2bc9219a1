-- ARGV: 2 recipient DID ("" for all). Returns the number of pending messages.
requeue_expired(now_ms())
if ARGV[2] == "" then return redis.call("ZCARD", K_PENDING) end
return redis.call("ZCARD", pending_key(ARGV[2]))
