-- One step of a SocketDock delivery loop: settles what the loop last sent, then hands out what
-- goes next, oldest first across both tiers.
-- ARGV: 1 lease token, 2 socket id ("" for a loop's first step: it takes the connection's relay
-- lease, if nobody holds it, and the socket is the one the connection is bound to), 3 how the
-- last hand-out ended: "ok" (a raw frame SocketDock took: it leaves the queue), "wrapped" (a
-- pickup delivery SocketDock took: its messages stay in flight until the recipient's
-- messages-received removes them), "failed" (the socket is gone: back to their places; the
-- caller ends the socket's bindings), "retry" (the mediator did not wrap them: in flight until
-- ARGV 7 ms from now, when the deadline sweep brings them back), 4 how long a raw frame may be
-- in flight (ms; the lease lasts as long, so that when a holder dies its message is back in its
-- place before anyone else holds the lease), 5 "1" to leave cold messages out, 6 the visibility
-- timeout (ms) of a pickup delivery, 7 the retry delay (ms), 8 most messages in one pickup
-- delivery, 9 most bytes of them, 10 most messages in flight to the connection at once, 11 how
-- long the lease lasts after handing out a pickup delivery (ms: the mediator wraps it, then
-- SocketDock takes it), 12 "1" when a raw frame of this holder is still on its way (the step
-- runs beside its POST): the lease is kept whatever happens and only a raw frame is handed out,
-- 13 how many of the pairs that follow, the last ones, go back to their places whatever the
-- outcome (messages a pickup delivery left out: the whole batch would not fit in one), 14.. pairs
-- of an id last handed out and the deadline it was handed out with.
-- The connection's `ack` field (set when its recipient turned Pickup V2 live mode on) chooses
-- the next hand-out: one raw frame, or a batch for the mediator to wrap in a pickup delivery.
-- Returns {"raw", socket, deadline, due, id, body} (body "" for a cold message; due as in
-- take_from_queue), {"wrap", socket, deadline, due, id, body, ...}, {"idle"} (nothing pending, or
-- as many in flight as allowed: a removal kicks the loop again), {"unbound"} (the connection is
-- no longer bound to this socket), {"failed"}, {"retry", at}, {"busy", at} (another holder has
-- the lease), {"none"} (a step beside a POST with nothing to hand out: the lease is kept); at is
-- when the caller must enter the connection in the deadline index (Redis clock), or -1. The
-- lease is given up by "idle", "unbound", "failed" and "retry". Fails with FENCED when the
-- lease is not the caller's.
local token, socket, outcome = ARGV[1], ARGV[2], ARGV[3]
local window, hot_only, visibility, retry = tonumber(ARGV[4]), ARGV[5] == "1", tonumber(ARGV[6]), tonumber(ARGV[7])
local batch, batch_bytes, most_in_flight = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local hold = ARGV[12] == "1"
local lease = window
local now = now_ms()
if socket == "" then
  if not redis.call("SET", Q.relay, token, "NX", "PX", window) then
    -- If that holder died, its lease outlives it: come back when it ends, or the work that
    -- kicked this step waits for the next add.
    local at = now + math.max(redis.call("PTTL", Q.relay), 0)
    if note_due(Q, at, now) == 1 then return {"busy", at} end
    return {"busy", -1}
  end
  local conn = redis.call("HMGET", Q.conn, "kind", "peer")
  if conn[1] ~= RELAY_KIND or not conn[2] then
    redis.call("DEL", Q.relay)
    return {"unbound"}
  end
  socket = conn[2]
elseif redis.call("GET", Q.relay) ~= token then
  return redis.error_reply("FENCED relay lease lost")
end
local left_out_from = #ARGV - 2 * tonumber(ARGV[13]) + 1
for i = 14, #ARGV, 2 do
  local id = ARGV[i]
  if inflight_with(Q, id, tonumber(ARGV[i + 1])) then
    if i >= left_out_from then
      release(Q, id, redis.call("HGET", Q.msg, id))
    elseif outcome == "ok" then
      delete(Q, id, true)
    elseif outcome == "failed" then
      release(Q, id, redis.call("HGET", Q.msg, id))
    elseif outcome == "retry" then
      local _, _, _, dids = parse(redis.call("HGET", Q.msg, id))
      to_inflight(Q, id, now + retry, dids)
    end
  end
end
-- A queue the settle emptied has nothing to hand out (the lone message's case): done, without
-- the reads below.
if outcome == "ok" and forget_if_empty(Q) then
  if hold then return {"none"} end
  redis.call("DEL", Q.relay)
  return {"idle"}
end
if outcome == "failed" then
  redis.call("DEL", Q.relay)
  return {"failed"}
end
if outcome == "retry" then
  redis.call("DEL", Q.relay)
  local at = now + retry
  if note_due(Q, at, now) == 1 then return {"retry", at} end
  return {"retry", -1}
end
-- Beside a POST, whatever is not a raw frame to hand out waits for the step after it.
local live = redis.call("HMGET", Q.conn, "ack", "kind", "peer")
local acknowledged = live[1]
if hold and acknowledged then return {"none"} end
if live[2] ~= RELAY_KIND or live[3] ~= socket then
  if hold then return {"none"} end
  redis.call("DEL", Q.relay)
  return {"unbound"}
end
-- What a dead holder had in flight is back in its place before anything newer goes out.
requeue_expired(Q, now)
local taken, deadline, kind
if acknowledged then
  local room = math.min(batch, most_in_flight - redis.call("ZCARD", Q.inflight))
  if room <= 0 then
    redis.call("DEL", Q.relay)
    return {"idle"}
  end
  deadline, kind, lease = now + visibility, "wrap", tonumber(ARGV[11])
  taken = hand_out(Q, nil, room, batch_bytes, false, deadline, hot_only)
  -- A message larger than a batch's bytes goes alone rather than never.
  if #taken == 0 then taken = hand_out(Q, nil, 1, math.huge, false, deadline, hot_only) end
  -- Under the binding's generation: a new binding (the recipient came back on another
  -- socket) puts them back at once rather than at their deadline.
  local gen = tonumber(redis.call("HGET", Q.conn, "gen")) or 0
  for i = 1, #taken, 2 do redis.call("ZADD", Q.pushed, gen, taken[i]) end
else
  deadline, kind = now + window, "raw"
  taken = hand_out(Q, nil, 1, math.huge, false, deadline, hot_only)
end
if #taken == 0 then
  if hold then return {"none"} end
  redis.call("DEL", Q.relay)
  return {"idle"}
end
redis.call("PEXPIRE", Q.relay, lease)
local reply = {kind, socket, deadline, note_due(Q, deadline, now)}
for _, v in ipairs(taken) do reply[#reply + 1] = v end
return reply
