-- An addMessage whose reply never came (timeout, broken connection). ARGV: 1 its message id.
-- Returns 1 if the add ran (the message is stored, or was and has been removed since), 2 if
-- that cannot be known (the whole queue was removed meanwhile), else 0, and then leaves a
-- tombstone under the id so that the add, should it still reach Redis, fails as a duplicate:
-- from here on the answer cannot change.
local id = ARGV[1]
local record = redis.call("HGET", Q.msg, id)
if record then
  if record == "" then return 0 end
  return 1
end
if redis.call("ZSCORE", Q.removed, id) then return 1 end
local cleared = tonumber(redis.call("HGET", Q.conn, "cleared"))
if cleared and cleared > now_ms() - REMEMBER_REMOVED_MS then return 2 end
redis.call("HSET", Q.msg, id, "")
return 0
