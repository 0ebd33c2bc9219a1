-- KEYS[1] live binding. ARGV: 1 instance, 2 socket. Ends the session only if it still belongs
-- to that socket (a newer binding from another socket wins). Returns 1 if it was removed.
local live = redis.call("HMGET", KEYS[1], "instance", "socket")
if live[1] == ARGV[1] and live[2] == ARGV[2] then
  redis.call("DEL", KEYS[1])
  return 1
end
return 0
