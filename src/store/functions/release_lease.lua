-- ARGV: 1 the lease holder's token. Deletes the lease only if still held by that token.
if redis.call("GET", Q.mover) == ARGV[1] then return redis.call("DEL", Q.mover) end
return 0
