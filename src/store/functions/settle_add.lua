-- An addMessage whose reply never came (timeout, broken connection). ARGV: 1 its message id.
-- Returns 1 if the add ran (the message is stored), else 0, and then leaves a tombstone under
-- the id so that the add, should it still reach Redis, fails as a duplicate: from here on the
-- answer cannot change.
if redis.call("HSETNX", Q.msg, ARGV[1], "") == 1 then return 0 end
if redis.call("HGET", Q.msg, ARGV[1]) == "" then return 0 end
return 1
