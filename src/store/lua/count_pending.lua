-- ARGV: 2 recipient DID ("" for all). Returns the number of pending messages in both tiers.
requeue_expired(now_ms())
local did = ARGV[2]
if did == "" then did = nil end
return redis.call("ZCARD", lane(did, false)) + redis.call("ZCARD", lane(did, true))
