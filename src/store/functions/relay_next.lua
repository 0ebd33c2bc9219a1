-- One step of a SocketDock delivery loop, run by the holder of the connection's relay lease:
-- settles what it last sent, then hands out what goes next, oldest first across both tiers.
-- ARGV: 1 lease token, 2 socket id, 3 how the last hand-out ended: "ok" (a raw frame SocketDock
-- took: it leaves the queue), "wrapped" (a pickup delivery SocketDock took: its messages stay in
-- flight until the recipient's messages-received removes them), "failed" (the socket is gone:
-- back to their places; the caller ends the socket's bindings), "retry" (the mediator did not
-- wrap them: in flight until ARGV 8 ms from now, when the deadline sweep brings them back),
-- 4 the deadline they were handed out with, 5 how long a raw frame may be in flight (ms; the
-- lease lasts as long, so that when a holder dies its message is back in its place before
-- anyone else holds the lease), 6 "1" to leave cold messages out, 7 the visibility timeout
-- (ms) of a pickup delivery, 8 the retry delay (ms), 9 most messages in one pickup delivery,
-- 10 most bytes of them, 11 most messages in flight to the connection at once, 12 how long the
-- lease lasts after handing out a pickup delivery (ms: the mediator wraps it, then SocketDock
-- takes it), 13.. the ids last handed out.
-- The connection's `ack` field (set when its recipient turned Pickup V2 live mode on) chooses
-- the next hand-out: one raw frame, or a batch for the mediator to wrap in a pickup delivery.
-- Returns {"raw", deadline, due, id, body} (body "" for a cold message; due as in
-- take_from_queue), {"wrap", deadline, due, id, body, ...}, {"idle"} (nothing pending, or as
-- many in flight as allowed: a removal kicks the loop again), {"unbound"} (the connection is
-- no longer bound to this socket), {"failed"}, {"retry", due}; the lease is given up by all
-- but "raw" and "wrap". Fails with FENCED when the lease is not the caller's.
local token, socket, outcome, sent_deadline = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local window, hot_only, visibility, retry = tonumber(ARGV[5]), ARGV[6] == "1", tonumber(ARGV[7]), tonumber(ARGV[8])
local batch, batch_bytes, most_in_flight = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local lease = window
if redis.call("GET", Q.relay) ~= token then return redis.error_reply("FENCED relay lease lost") end
local now = now_ms()
for i = 13, #ARGV do
  local id = ARGV[i]
  if inflight_with(Q, id, sent_deadline) then
    if outcome == "ok" then
      delete(Q, id)
    elseif outcome == "failed" then
      release(Q, id, redis.call("HGET", Q.msg, id))
    elseif outcome == "retry" then
      local _, _, _, dids = parse(redis.call("HGET", Q.msg, id))
      to_inflight(Q, id, now + retry, dids)
    end
  end
end
if outcome == "ok" then forget_if_empty(Q) end
if outcome == "failed" then
  redis.call("DEL", Q.relay)
  return {"failed"}
end
if outcome == "retry" then
  redis.call("DEL", Q.relay)
  return {"retry", note_due(Q, now + retry, now)}
end
if not bound_to(Q, RELAY_KIND, socket) then
  redis.call("DEL", Q.relay)
  return {"unbound"}
end
-- What a dead holder had in flight is back in its place before anything newer goes out.
requeue_expired(Q, now)
local taken, deadline, kind
if redis.call("HGET", Q.conn, "ack") then
  local room = math.min(batch, most_in_flight - redis.call("ZCARD", Q.inflight))
  if room <= 0 then
    redis.call("DEL", Q.relay)
    return {"idle"}
  end
  deadline, kind, lease = now + visibility, "wrap", tonumber(ARGV[12])
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
  redis.call("DEL", Q.relay)
  return {"idle"}
end
redis.call("PEXPIRE", Q.relay, lease)
local reply = {kind, deadline, note_due(Q, deadline, now)}
for _, v in ipairs(taken) do reply[#reply + 1] = v end
return reply
