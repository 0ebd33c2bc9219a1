-- Helpers shared by the functions of the library, defined once when the library loads.
--
-- Q holds the keys of one call by name (`Q.msg`, `Q.pending`, ...): the generated wrapper of each
-- function fills it from KEYS in the order `functions.rs` declares, so the layout is written
-- once. `Q.did_base` is the prefix of the per-recipient keys, "<p>:{<connectionId>}:d:": they
-- share the connection's hash tag, so they live in the slot of the declared keys.
--
-- A record is "<seq>\t<size>\t<received ms>[\t<did>...]\n<QueuedMessage JSON>": the header lets a
-- function re-index, size-limit, age and delete a message without decoding JSON. A cold record
-- (body moved to MongoDB) is the header alone.

local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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

-- Messages whose visibility deadline passed become pending again, in their original place.
-- Each in-flight message is moved back at most once per hand-out, so the cost is amortised
-- over the calls that handed it out.
local function requeue_expired(Q, now)
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", Q.inflight, "-inf", now)) do
    local record = redis.call("HGET", Q.msg, id)
    if record then
      release(Q, id, record)
    else
      redis.call("ZREM", Q.inflight, id)
    end
  end
end

-- Deletes a message from every index. A cold one's id goes to the trash (its MongoDB document
-- is the caller's to delete) and to Q.trashed, which the caller gets back.
local function delete(Q, id)
  local record = redis.call("HGET", Q.msg, id)
  if not record then return 0 end
  local _, _, _, dids, cold = parse(record)
  redis.call("HDEL", Q.msg, id)
  from_pending(Q, id, dids, cold)
  from_inflight(Q, id, dids)
  if cold then
    redis.call("SADD", Q.trash, id)
    Q.trashed[#Q.trashed + 1] = id
  end
  return 1
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

local function forget_dids(Q, dids)
  if #dids == 0 then return end
  local fields = {}
  for i, did in ipairs(dids) do fields[i] = "d:" .. did end
  redis.call("HDEL", Q.conn, unpack(fields))
end

-- An empty queue leaves no keys behind (the counter restarts: order only matters among
-- messages that coexist).
local function forget_if_empty(Q)
  if redis.call("HLEN", Q.msg) == 0 then
    redis.call("DEL", Q.seq)
    forget_dids(Q, dids_of(Q))
  end
end

-- Whether the live binding is exactly this peer (kind and address).
local function bound_to(Q, kind, peer)
  local live = redis.call("HMGET", Q.conn, "kind", "peer")
  return live[1] == kind and live[2] == peer
end

local function unbind(Q)
  redis.call("HDEL", Q.conn, "kind", "peer", "session")
end
