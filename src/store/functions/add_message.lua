-- The hot path, written with plain locals and as few commands as a message needs: the one
-- HMGET of the connection's hash reads the live binding, when the connection is next due in
-- the visit index, the bytes it holds, whether it takes pickup deliveries and whether each
-- recipient DID is known already.
-- ARGV: 1 id, 2 now (ms, this instance's clock), 3 visibility timeout ms, 4 visit marker lifetime
-- ms (0: no mover or retention runs), 5 most messages the connection may hold, 6 most bytes of
-- them (0: no quota), 7 a relay lease token ("" when the caller delivers to no SocketDock), 8 how
-- long a raw frame may be in flight (ms; relay_next's window), 9..n-1 dids, n the record tail
-- "<size>\t<received ms>[\t<did>...]\n<body>".
-- Fails with "QUOTA messages|bytes <limit>", touching nothing, when the message would take the
-- connection past a quota.
-- Returns {visit} when queued as pending, {visit, kind, peer} when queued as pending for a
-- relay (a SocketDock socket, whose lease holder hands it out), or {visit, kind, peer,
-- deadline, due} when the message went in flight at once: to the peer of another live session
-- (pushed under the binding's generation), or, kind being a relay's, handed out as a raw frame
-- under the relay lease, which the caller now holds with its token. visit is 1 when the caller
-- must (re)enter the connection in the visit index, due 1 when it must enter it in the deadline
-- index at `deadline`.
local id, now, visibility, visit_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local max_messages, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local relay_token, raw_window = ARGV[7], tonumber(ARGV[8])
local first_did, last_did, tail = 9, #ARGV - 1, ARGV[#ARGV]
local size = tonumber(string.match(tail, "^%d+"))

local fields = {"kind", "peer", "visit", "gen", "due", "bytes", "ack"}
-- conn[i + did_field] is the field of the DID in ARGV[i].
local did_field = #fields + 1 - first_did
for i = first_did, last_did do fields[#fields + 1] = "d:" .. ARGV[i] end
local conn = redis.call("HMGET", k_conn, unpack(fields))
if max_messages > 0 and redis.call("HLEN", k_msg) >= max_messages then
  return redis.error_reply("QUOTA messages " .. max_messages)
end
if max_bytes > 0 and (tonumber(conn[6]) or 0) + size > max_bytes then
  return redis.error_reply("QUOTA bytes " .. max_bytes)
end

-- (A duplicate id burns a sequence number: harmless, order is all it gives.)
local seq = redis.call("INCR", k_seq)
if redis.call("HSETNX", k_msg, id, seq .. "\t" .. tail) == 0 then
  return redis.error_reply("DUPLICATE message id " .. id)
end

-- The connection's hash is written once, below, with every field this add changes: the bytes
-- (kept whether or not a quota is set, so that setting one later finds the truth), and when
-- due, the visit marker, the recipient DIDs not known yet and the deadline.
local writes = {"bytes", (tonumber(conn[6]) or 0) + size}
-- The marker is a time, so an index entry lost to a crash is re-made by an add after it.
local visit = 0
if visit_ttl > 0 and (not conn[3] or tonumber(conn[3]) < now) then
  writes[#writes + 1], writes[#writes + 2] = "visit", now + visit_ttl
  visit = 1
end
for i = first_did, last_did do
  if not conn[i + did_field] then writes[#writes + 1], writes[#writes + 2] = "d:" .. ARGV[i], 1 end
end

-- In flight until `deadline`: returns the reply of a message that went out at once.
-- Each DID's keys are declared after the `fixed_keys` ones: its pending, then its inflight lane.
local function in_flight(deadline, redis_now)
  redis.call("ZADD", k_inflight, deadline, id)
  for i = first_did, last_did do
    redis.call("ZADD", KEYS[fixed_keys + 2 * (i - first_did + 1)], deadline, id)
  end
  -- (note_due, inlined: the hash was read above)
  local due, index = tonumber(conn[5]), 0
  if not due or due > deadline or due <= redis_now - DUE_LOST_MS then
    writes[#writes + 1], writes[#writes + 2] = "due", deadline
    index = 1
  end
  redis.call("HSET", k_conn, unpack(writes))
  return {visit, conn[1], conn[2], deadline, index}
end

if conn[1] and conn[2] and conn[1] ~= RELAY_KIND then
  local redis_now = now_ms()
  redis.call("ZADD", k_pushed, tonumber(conn[4]) or 0, id)
  return in_flight(redis_now + visibility, redis_now)
end
-- A socket's lone message goes out at once: when the caller delivers to SocketDock, the
-- connection takes raw frames, nothing else of it waits or is on its way (no pending, cold or
-- in-flight index exists: Redis deletes an empty one) and nobody holds its lease, the add
-- takes the lease and hands the message out as relay_next would, sparing the delivery loop
-- its first call.
if conn[1] == RELAY_KIND and conn[2] and relay_token ~= "" and not conn[7]
    and redis.call("EXISTS", k_pending, k_cold, k_inflight) == 0
    and redis.call("SET", k_relay, relay_token, "NX", "PX", raw_window) then
  local redis_now = now_ms()
  return in_flight(redis_now + raw_window, redis_now)
end
redis.call("HSET", k_conn, unpack(writes))
redis.call("ZADD", k_pending, seq, id)
for i = first_did, last_did do
  redis.call("ZADD", KEYS[fixed_keys + 2 * (i - first_did + 1) - 1], seq, id)
end
if conn[1] and conn[2] then return {visit, conn[1], conn[2]} end
return {visit}
