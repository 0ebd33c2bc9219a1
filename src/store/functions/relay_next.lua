-- One step of a SocketDock delivery loop, run by the holder of the connection's relay lease:
-- settles the message it last sent, then hands out the next one, oldest first across both
-- tiers. ARGV: 1 lease token, 2 socket id, 3 id of the message last sent ("": none), 4 the
-- deadline it was handed out with, 5 "ok" (SocketDock took it: it leaves the queue) or
-- "failed" (the socket is gone: it goes back to its place; the caller ends the socket's
-- bindings), 6 how long a message may be in flight to the socket (ms; the lease lasts as long,
-- so that when a holder dies its message is back in its place before anyone else holds the
-- lease), 7 "1" to leave cold messages out.
-- Returns {"next", id, body, deadline, due} (body "" for a cold message; due as in
-- take_from_queue), {"idle"} (nothing pending), {"unbound"} (the connection is no longer
-- bound to this socket), {"failed"}; the lease is given up by all but
-- "next". Fails with FENCED when the lease is not the caller's.
local token, socket, sent, sent_deadline = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local outcome, window, hot_only = ARGV[5], tonumber(ARGV[6]), ARGV[7] == "1"
if redis.call("GET", Q.relay) ~= token then return redis.error_reply("FENCED relay lease lost") end
if sent ~= "" and inflight_with(Q, sent, sent_deadline) then
  if outcome == "ok" then
    delete(Q, sent)
    forget_if_empty(Q)
  else
    release(Q, sent, redis.call("HGET", Q.msg, sent))
  end
end
if outcome == "failed" then
  redis.call("DEL", Q.relay)
  return {"failed"}
end
if not bound_to(Q, RELAY_KIND, socket) then
  redis.call("DEL", Q.relay)
  return {"unbound"}
end
local now = now_ms()
-- What a dead holder had in flight is back in its place before anything newer goes out.
requeue_expired(Q, now)
local deadline = now + window
local taken = hand_out(Q, nil, 1, math.huge, false, deadline, hot_only)
if #taken == 0 then
  redis.call("DEL", Q.relay)
  return {"idle"}
end
redis.call("PEXPIRE", Q.relay, window)
return {"next", taken[1], taken[2], deadline, note_due(Q, deadline, now)}
