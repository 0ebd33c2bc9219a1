-- Helpers shared by the functions of the library, defined once when the library loads.
--
-- Q holds the keys of one call by name (`Q.msg`, `Q.pending`, ...): the generated wrapper of each
-- function fills it from KEYS in the order `functions.rs` declares, so the layout is written
-- once. `Q.did_base` is the prefix of the per-recipient keys, "<p>:{<connectionId>}:d:": they
-- share the connection's hash tag, so they live in the slot of the declared keys.
--
-- A record is "<seq>\t<size>\t<received ms>[\t<did>...]\n<QueuedMessage JSON>": the header lets a
-- function re-index, size-limit, age and delete a message without decoding JSON. A cold record
-- (body moved to MongoDB) is the header alone. An empty record is the tombstone of an add whose
-- outcome was settled as "not stored" (`settle_add`); nothing indexes it.

-- Most messages, and bytes of them, that one call re-delivers or puts back to pending: a mass
-- expiry or a long backlog is worked off in bounded steps (the deadline index brings the
-- connection back at once for the next one), so no call holds Redis for long.
local REDELIVER_COUNT = 100
local REDELIVER_BYTES = 4194304
-- The binding kind of a SocketDock socket (a relay): its messages are not pushed in flight by
-- whoever adds or re-delivers them but handed out one at a time by the holder of the
-- connection's relay lease (`relay_next`), so they stay pending until then.
local RELAY_KIND = "sd"
-- A deadline-index entry that passed this long ago without a sweep was lost (a crash between a
-- function and the index write that follows it): the next hand-out enters it again.
local DUE_LOST_MS = 10000
-- Most instances one heartbeat looks at (running ones, and dead ones until taken over).
local MOST_INSTANCES = 1024

-- Redis's clock (ms) when the call began, read once by `fence`: a call is atomic, so one
-- instant serves all of it, and each further TIME would cost a command.
local call_started_ms = 0
local function now_ms() return call_started_ms end

-- Every function starts here (the generated wrapper): ARGV[1] is the call's deadline, ms since
-- the epoch by the caller's clock, when the caller stops waiting for the reply. Past it (by
-- Redis's clock) the call does nothing and answers DEADLINE, so a call whose caller gave up can
-- never take effect later. The bodies see their own arguments from ARGV[1] on.
local function fence(ARGV)
  local deadline = tonumber(table.remove(ARGV, 1))
  if not deadline then
    error({err = "DEADLINE missing: every call's first argument is its deadline (Store::function_call)"})
  end
  local t = redis.call("TIME")
  call_started_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local late = call_started_ms - deadline
  if late > 0 then
    error({err = "DEADLINE the call reached Redis " .. late .. " ms after its deadline; nothing was done"})
  end
end

-- seq, size, received ms, dids, cold (no body), index of the first body byte
local function parse(record)
  local nl = string.find(record, "\n", 1, true)
  local fields = {}
  for field in string.gmatch(string.sub(record, 1, nl - 1), "[^\t]+") do fields[#fields + 1] = field end
  local dids = {}
  for i = 4, #fields do dids[#dids + 1] = fields[i] end
  return tonumber(fields[1]), tonumber(fields[2]), tonumber(fields[3]), dids, nl == #record, nl + 1
end

-- The pending index of a tier, for the connection (did nil) or one recipient DID.
local function lane(Q, did, cold)
  if not did then
    if cold then return Q.cold end
    return Q.pending
  end
  if cold then return Q.did_base .. did .. ":cold" end
  return Q.did_base .. did .. ":pending"
end

local function inflight_key(Q, did) return Q.did_base .. did .. ":inflight" end

local function to_pending(Q, id, seq, dids, cold)
  redis.call("ZADD", lane(Q, nil, cold), seq, id)
  for _, did in ipairs(dids) do redis.call("ZADD", lane(Q, did, cold), seq, id) end
end

local function from_pending(Q, id, dids, cold)
  redis.call("ZREM", lane(Q, nil, cold), id)
  for _, did in ipairs(dids) do redis.call("ZREM", lane(Q, did, cold), id) end
end

local function to_inflight(Q, id, deadline, dids)
  redis.call("ZADD", Q.inflight, deadline, id)
  for _, did in ipairs(dids) do redis.call("ZADD", inflight_key(Q, did), deadline, id) end
end

local function from_inflight(Q, id, dids)
  redis.call("ZREM", Q.inflight, id)
  redis.call("ZREM", Q.pushed, id)
  for _, did in ipairs(dids) do redis.call("ZREM", inflight_key(Q, did), id) end
end

-- Whether a message is still in flight with exactly this deadline: not taken, removed or
-- re-delivered since the hand-out that set it.
local function inflight_with(Q, id, deadline)
  local score = redis.call("ZSCORE", Q.inflight, id)
  return score and tonumber(score) == deadline
end

-- Makes an in-flight message pending again, in its original place.
local function release(Q, id, record)
  local seq, _, _, dids, cold = parse(record)
  from_inflight(Q, id, dids)
  to_pending(Q, id, seq, dids, cold)
end

-- Messages whose visibility deadline passed become pending again, in their original place; at
-- most a bounded batch per call (the deadline index sweeps the rest).
local function requeue_expired(Q, now)
  local expired = redis.call("ZRANGE", Q.inflight, "-inf", now, "BYSCORE", "LIMIT", 0, REDELIVER_COUNT)
  for _, id in ipairs(expired) do
    local record = redis.call("HGET", Q.msg, id)
    if record then
      release(Q, id, record)
    else
      redis.call("ZREM", Q.inflight, id)
    end
  end
end

-- How long the ids of removed messages are remembered (ms), so that an add whose reply was
-- lost is not taken for "never stored" when a client removed the message before the settle
-- (`settle_add`, within ADD_SETTLE_TIMEOUT_MS plus REDIS_TIMEOUT_MS, both bounded well below).
local REMEMBER_REMOVED_MS = 120000

-- Only messages received within that window are remembered: older ones cannot be an unsettled add.
local function remember_removed(Q, id, received)
  local now = now_ms()
  if received <= now - REMEMBER_REMOVED_MS then return end
  redis.call("ZADD", Q.removed, now, id)
  redis.call("ZREMRANGEBYSCORE", Q.removed, "-inf", now - REMEMBER_REMOVED_MS)
  redis.call("PEXPIRE", Q.removed, REMEMBER_REMOVED_MS)
end

-- The bytes of encryptedMessage a connection holds (`bytes` in its hash, for QUEUE_MAX_BYTES),
-- kept as messages come and go; never below 0 (messages stored before it was counted).
local function count_bytes(Q, delta)
  if delta ~= 0 and redis.call("HINCRBY", Q.conn, "bytes", delta) < 0 then
    redis.call("HSET", Q.conn, "bytes", 0)
  end
end

-- Deletes a message from every index; `in_flight` when the caller found it in flight, and so in
-- no pending index (a message is in one or the other). A cold one's id goes to the trash (its
-- MongoDB document is the caller's to delete) and to Q.trashed, which the caller gets back.
local function delete(Q, id, in_flight)
  local record = redis.call("HGET", Q.msg, id)
  if not record then return 0 end
  if record == "" then
    -- The tombstone of an add refused by `settle_add`: never a message.
    redis.call("HDEL", Q.msg, id)
    return 0
  end
  local _, size, received, dids, cold = parse(record)
  redis.call("HDEL", Q.msg, id)
  count_bytes(Q, -size)
  remember_removed(Q, id, received)
  if not in_flight then from_pending(Q, id, dids, cold) end
  from_inflight(Q, id, dids)
  if cold then
    redis.call("SADD", Q.trash, id)
    Q.trashed[#Q.trashed + 1] = id
  end
  return 1
end

-- Hands out the oldest pending messages of both tiers, merged by arrival sequence: at most
-- `limit`, and `byte_limit` bytes of them. A hot one is deleted at once with `delete_taken`;
-- the others go in flight until `deadline` (a cold one always: its body is in MongoDB, for the
-- caller to read). Returns {id, body, ...} (body "" for a cold message) and whether any went
-- in flight.
local function hand_out(Q, did, limit, byte_limit, delete_taken, deadline, hot_only)
  local hot = redis.call("ZRANGE", lane(Q, did, false), 0, limit - 1, "WITHSCORES")
  local cold = {}
  if not hot_only then cold = redis.call("ZRANGE", lane(Q, did, true), 0, limit - 1, "WITHSCORES") end
  local taken, count, bytes, deleted_bytes, h, c, in_flight = {}, 0, 0, 0, 1, 1, false
  while count < limit do
    local id
    if h < #hot and (c >= #cold or tonumber(hot[h + 1]) <= tonumber(cold[c + 1])) then
      id = hot[h]
      h = h + 2
    elseif c < #cold then
      id = cold[c]
      c = c + 2
    else
      break
    end
    local record = redis.call("HGET", Q.msg, id)
    if record then
      local _, size, received, dids, is_cold, body = parse(record)
      if bytes + size > byte_limit then break end
      bytes = bytes + size
      count = count + 1
      from_pending(Q, id, dids, is_cold)
      if delete_taken and not is_cold then
        redis.call("HDEL", Q.msg, id)
        deleted_bytes = deleted_bytes + size
        remember_removed(Q, id, received)
      else
        to_inflight(Q, id, deadline, dids)
        in_flight = true
      end
      taken[#taken + 1] = id
      taken[#taken + 1] = string.sub(record, body)
    else
      redis.call("ZREM", lane(Q, did, false), id)
      redis.call("ZREM", lane(Q, did, true), id)
    end
  end
  count_bytes(Q, -deleted_bytes)
  return taken, in_flight
end

-- The recipient DIDs that have per-recipient keys: fields "d:<did>" of the connection's hash
-- (bounded by the DIDs of the connection, not by its messages).
local function dids_of(Q)
  local dids = {}
  for _, field in ipairs(redis.call("HKEYS", Q.conn)) do
    if string.sub(field, 1, 2) == "d:" then dids[#dids + 1] = string.sub(field, 3) end
  end
  return dids
end

-- Deletes the fields of the connection's hash that name these DIDs, and the `extra` ones.
local function forget_dids(Q, dids, ...)
  local fields = {...}
  for _, did in ipairs(dids) do fields[#fields + 1] = "d:" .. did end
  if #fields > 0 then redis.call("HDEL", Q.conn, unpack(fields)) end
end

-- An empty queue leaves no keys behind (the counter restarts: order only matters among
-- messages that coexist), and holds 0 bytes whatever the count said. Returns whether it was
-- empty (nothing pending, cold or in flight: every message has its record in Q.msg).
local function forget_if_empty(Q)
  if redis.call("HLEN", Q.msg) > 0 then return false end
  redis.call("DEL", Q.seq)
  forget_dids(Q, dids_of(Q), "bytes")
  return true
end

-- Whether the live binding is exactly this peer (kind and address).
local function bound_to(Q, kind, peer)
  local live = redis.call("HMGET", Q.conn, "kind", "peer")
  return live[1] == kind and live[2] == peer
end

-- Ending a binding starts a new generation: what was pushed under it is now "stale" (its peer
-- is gone), for `redeliver` to put back.
local function unbind(Q)
  redis.call("HDEL", Q.conn, "kind", "peer", "session")
  redis.call("HINCRBY", Q.conn, "gen", 1)
end

-- Records that the connection has a message in flight until `deadline` (Redis clock, ms).
-- Returns 1 when the caller must enter the connection in the deadline index at that time: it
-- has no entry yet, a later one, or one that was lost.
local function note_due(Q, deadline, now)
  local due = tonumber(redis.call("HGET", Q.conn, "due"))
  if due and due <= deadline and due > now - DUE_LOST_MS then return 0 end
  redis.call("HSET", Q.conn, "due", deadline)
  return 1
end

-- One bounded step of re-delivery: in-flight messages whose deadline passed, then messages
-- pushed under an older binding (`pushed` scored below the current generation), leave flight.
-- With a live session bound they go in flight to it again, oldest first, under the current
-- generation; without one they are pending again, in their original place.
-- Returns {due, kind, peer, deadline, {id, body, ...}, released, last released id}: due is
-- when the deadline index should look at the connection again (-1: nothing in flight), body is
-- "" for a cold message (its body is in MongoDB), released counts those put back to pending.
local function redeliver(Q, visibility)
  local now = now_ms()
  local conn = redis.call("HMGET", Q.conn, "kind", "peer", "gen")
  -- (A relay's messages wait pending for its lease holder.)
  local bound = conn[1] and conn[2] and conn[1] ~= RELAY_KIND
  local gen = tonumber(conn[3]) or 0
  local deadline = now + visibility
  -- count: messages taken out of flight by this step (re-pushed or released).
  local chosen, count, bytes, more, released, last = {}, 0, 0, false, 0, ""
  local function step(key, max)
    local limit = REDELIVER_COUNT - count
    local ids = redis.call("ZRANGE", key, "-inf", max, "BYSCORE", "LIMIT", 0, limit)
    for _, id in ipairs(ids) do
      local record = redis.call("HGET", Q.msg, id)
      if not record then
        redis.call("ZREM", Q.inflight, id)
        redis.call("ZREM", Q.pushed, id)
      else
        local seq, size, _, dids, cold, body = parse(record)
        if count > 0 and bytes + size > REDELIVER_BYTES then
          more = true
          return
        end
        bytes, count = bytes + size, count + 1
        if bound then
          from_inflight(Q, id, dids)
          to_inflight(Q, id, deadline, dids)
          redis.call("ZADD", Q.pushed, gen, id)
          if cold then body = "" else body = string.sub(record, body) end
          chosen[#chosen + 1] = {seq, id, body}
        else
          release(Q, id, record)
          released, last = released + 1, id
        end
      end
    end
    -- A full page: there may be more.
    if #ids >= limit then more = true end
  end
  step(Q.inflight, now)
  if not more then step(Q.pushed, "(" .. gen) end
  local out = {}
  if bound then
    table.sort(chosen, function(a, b) return a[1] < b[1] end)
    for _, m in ipairs(chosen) do
      out[#out + 1] = m[2]
      out[#out + 1] = m[3]
    end
  end
  local due = -1
  if more then
    due = now
  else
    local head = redis.call("ZRANGE", Q.inflight, 0, 0, "WITHSCORES")
    if head[1] then due = tonumber(head[2]) end
  end
  -- A relay's pending messages wait for its lease holder; if that holder died, its lease still
  -- keeps everyone else out until it ends: come back then (the kick this step makes meets the
  -- lease), or the messages wait for the next add.
  if conn[1] == RELAY_KIND then
    local held = redis.call("PTTL", Q.relay)
    if held > 0 and (redis.call("ZCARD", Q.pending) > 0 or redis.call("ZCARD", Q.cold) > 0) then
      local lease_end = now + held
      if due < 0 or due > lease_end then due = lease_end end
    end
  end
  if due >= 0 then redis.call("HSET", Q.conn, "due", due) else redis.call("HDEL", Q.conn, "due") end
  return {due, conn[1] or "", conn[2] or "", deadline, out, released, last}
end

-- A step that did nothing, in `redeliver`'s shape.
local function no_step() return {-1, "", "", 0, {}, 0, ""} end
