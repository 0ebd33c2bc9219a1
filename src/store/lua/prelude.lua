-- Shared by every queue script (prepended at build time).
--
-- KEYS: 1 msg (HASH id -> record), 2 pending (ZSET of pending messages held in Redis, by seq),
-- 3 inflight (ZSET id by visibility deadline, ms), 4 seq (STRING counter), 5 dids (SET of
-- recipient DIDs seen), 6 live (HASH binding of a live session), 7 cold (ZSET of pending
-- messages whose body is in MongoDB, by seq), 8 trash (SET of ids whose MongoDB documents are
-- still to be deleted), 9 visit (STRING: the connection is in the visit index), 10 mover
-- (STRING: lease of the instance moving this connection's messages), 11 imported (SET of ids
-- brought over from the Node MPR), 12 moving (SET: ids read by a mover, not yet settled).
-- ARGV[1]: prefix of the per-recipient keys, "<prefix>:{<connectionId>}:d:". They share the
-- connection's hash tag, so they live in the same cluster slot as KEYS.
--
-- A record is "<seq>\t<size>\t<received ms>[\t<did>...]\n<QueuedMessage JSON>": the header lets a
-- script re-index, size-limit, age and delete a message without decoding JSON. A cold record
-- (body moved to MongoDB) is the header alone.
local K_MSG, K_PENDING, K_INFLIGHT, K_SEQ, K_DIDS, K_LIVE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local K_COLD, K_TRASH, K_VISIT, K_MOVER, K_IMPORTED = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local K_MOVING = KEYS[12]
local DID_BASE = ARGV[1]

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
local function lane(did, cold)
  if not did then
    if cold then return K_COLD end
    return K_PENDING
  end
  if cold then return DID_BASE .. did .. ":cold" end
  return DID_BASE .. did .. ":pending"
end
local function inflight_key(did) return DID_BASE .. did .. ":inflight" end

local function to_pending(id, seq, dids, cold)
  redis.call("ZADD", lane(nil, cold), seq, id)
  for _, did in ipairs(dids) do redis.call("ZADD", lane(did, cold), seq, id) end
end

local function from_pending(id, dids, cold)
  redis.call("ZREM", lane(nil, cold), id)
  for _, did in ipairs(dids) do redis.call("ZREM", lane(did, cold), id) end
end

local function to_inflight(id, deadline, dids)
  redis.call("ZADD", K_INFLIGHT, deadline, id)
  for _, did in ipairs(dids) do redis.call("ZADD", inflight_key(did), deadline, id) end
end

local function from_inflight(id, dids)
  redis.call("ZREM", K_INFLIGHT, id)
  for _, did in ipairs(dids) do redis.call("ZREM", inflight_key(did), id) end
end

-- Whether a message is still in flight with exactly this deadline: not taken, removed or
-- re-delivered since the hand-out that set it.
local function inflight_with(id, deadline)
  local score = redis.call("ZSCORE", K_INFLIGHT, id)
  return score and tonumber(score) == deadline
end

-- Makes an in-flight message pending again, in its original place.
local function release(id, record)
  local seq, _, _, dids, cold = parse(record)
  from_inflight(id, dids)
  to_pending(id, seq, dids, cold)
end

-- Messages whose visibility deadline passed become pending again, in their original place.
-- Each in-flight message is moved back at most once per hand-out, so the cost is amortised
-- over the calls that handed it out.
local function requeue_expired(now)
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", K_INFLIGHT, "-inf", now)) do
    local record = redis.call("HGET", K_MSG, id)
    if record then
      release(id, record)
    else
      redis.call("ZREM", K_INFLIGHT, id)
    end
  end
end

-- Ids of cold messages deleted by this script: their MongoDB documents are the caller's to
-- delete (they wait in the trash set until it has).
local TRASHED = {}

local function delete(id)
  local record = redis.call("HGET", K_MSG, id)
  if not record then return 0 end
  local _, _, _, dids, cold = parse(record)
  redis.call("HDEL", K_MSG, id)
  from_pending(id, dids, cold)
  from_inflight(id, dids)
  if cold then
    redis.call("SADD", K_TRASH, id)
    TRASHED[#TRASHED + 1] = id
  end
  return 1
end

-- An empty queue leaves no keys behind (the counter restarts: order only matters among
-- messages that coexist).
local function forget_if_empty()
  if redis.call("HLEN", K_MSG) == 0 then redis.call("DEL", K_SEQ, K_DIDS) end
end

-- {count, {trashed id...}}: the reply shape of scripts that delete.
local function with_trashed(count)
  return {count, TRASHED}
end
