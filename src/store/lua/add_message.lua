-- ARGV: 2 id, 3 visibility timeout ms, 4 record tail "<size>[\t<did>...]\n<body>", 5.. dids
-- Returns {} when queued as pending, or {instance, socket, deadline} when the connection has a
-- live session: the message is then in flight to that socket.
local id, visibility, tail = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local dids = {}
for i = 5, #ARGV do dids[#dids + 1] = ARGV[i] end

-- (A duplicate id burns a sequence number: harmless, order is all it gives.)
local seq = redis.call("INCR", K_SEQ)
if redis.call("HSETNX", K_MSG, id, seq .. "\t" .. tail) == 0 then
  return redis.error_reply("DUPLICATE message id " .. id)
end
if #dids > 0 then redis.call("SADD", K_DIDS, unpack(dids)) end

local live = redis.call("HMGET", K_LIVE, "instance", "socket")
if live[1] and live[2] then
  local deadline = now_ms() + visibility
  to_inflight(id, deadline, dids)
  return {live[1], live[2], deadline}
end
to_pending(id, seq, dids)
return {}
