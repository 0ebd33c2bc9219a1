-- ARGV: 2 id, 3 visibility timeout ms, 4 record tail "<size>\t<received ms>[\t<did>...]\n<body>",
-- 5 visit marker lifetime ms (0: no mover or retention runs), 6.. dids.
-- Returns {visit} when queued as pending, or {visit, instance, socket, deadline} when the
-- connection has a live session: the message is then in flight to that socket. visit is 1 when
-- the caller must (re)enter the connection in the visit index.
local id, visibility, tail, visit_ttl = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local dids = {}
for i = 6, #ARGV do dids[#dids + 1] = ARGV[i] end

-- (A duplicate id burns a sequence number: harmless, order is all it gives.)
local seq = redis.call("INCR", K_SEQ)
if redis.call("HSETNX", K_MSG, id, seq .. "\t" .. tail) == 0 then
  return redis.error_reply("DUPLICATE message id " .. id)
end
if #dids > 0 then redis.call("SADD", K_DIDS, unpack(dids)) end

-- The marker expires, so an index entry lost to a crash is re-made by a later add.
local visit = 0
if visit_ttl > 0 and redis.call("SET", K_VISIT, "1", "NX", "PX", visit_ttl) then visit = 1 end

local live = redis.call("HMGET", K_LIVE, "instance", "socket")
if live[1] and live[2] then
  local deadline = now_ms() + visibility
  to_inflight(id, deadline, dids)
  return {visit, live[1], live[2], deadline}
end
to_pending(id, seq, dids, false)
return {visit}
