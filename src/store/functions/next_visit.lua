-- When the mover should look at this connection again. ARGV: 1 move threshold ms (0: no
-- mover), 2 retention ms (0: none). Returns the time (ms) or -1 when nothing will need it; then
-- the visit marker goes too, so the next addMessage enters the connection in the index again.
local threshold, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local next_at
local function consider(t)
  if not next_at or t < next_at then next_at = t end
end
local function head_received(key)
  local head = redis.call("ZRANGE", key, 0, 0)
  if head[1] then
    local record = redis.call("HGET", Q.msg, head[1])
    if record then
      local _, _, received = parse(record)
      return received
    end
    return 0
  end
end
local hot = head_received(Q.pending)
if hot and threshold > 0 then consider(hot + threshold) end
if retention > 0 then
  if hot then consider(hot + retention) end
  local cold = head_received(Q.cold)
  if cold then consider(cold + retention) end
end
-- In-flight messages come back when their deadline passes, possibly old enough to move.
local inflight = redis.call("ZRANGE", Q.inflight, 0, 0, "WITHSCORES")
if inflight[1] then consider(tonumber(inflight[2]) + 1) end
if redis.call("SCARD", Q.trash) > 0 then consider(0) end
if not next_at then
  redis.call("HDEL", Q.conn, "visit")
  return -1
end
return next_at
