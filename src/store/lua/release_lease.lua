-- KEYS[1] a lease. ARGV[1] its holder's token. Deletes it only if still held by that token.
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
