-- ARGV: 1 recipient DID ("" for all). Returns the number of pending messages in both tiers.
requeue_expired(Q, now_ms())
local did = ARGV[1]
if did == "" then did = nil end
return redis.call("ZCARD", lane(Q, did, false)) + redis.call("ZCARD", lane(Q, did, true))
