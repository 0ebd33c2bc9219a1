-- Shared by every queue script (prepended at build time).
--
-- KEYS: 1 msg (HASH id -> record), 2 pending (ZSET id by seq), 3 inflight (ZSET id by
-- visibility deadline, ms), 4 seq (STRING counter), 5 dids (SET of recipient DIDs seen),
-- 6 live (HASH binding of a live session).
-- ARGV[1]: prefix of the per-recipient keys, "<prefix>:{<connectionId>}:d:". They share the
-- connection's hash tag, so they live in the same cluster slot as KEYS.
--
-- A record is "<seq>\t<size>[\t<did>...]\n<QueuedMessage JSON>": the header lets a script
-- re-index, size-limit and delete a message without decoding JSON.
local K_MSG, K_PENDING, K_INFLIGHT, K_SEQ, K_DIDS, K_LIVE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local DID_BASE = ARGV[1]

local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- seq, size, dids, index of the first body byte
local function parse(record)
  local nl = string.find(record, "\n", 1, true)
  local seq, size, dids = nil, nil, {}
  for field in string.gmatch(string.sub(record, 1, nl - 1), "[^\t]+") do
    if not seq then seq = tonumber(field)
    elseif not size then size = tonumber(field)
    else dids[#dids + 1] = field end
  end
  return seq, size, dids, nl + 1
end

local function pending_key(did) return DID_BASE .. did .. ":pending" end
local function inflight_key(did) return DID_BASE .. did .. ":inflight" end

local function to_pending(id, seq, dids)
  redis.call("ZADD", K_PENDING, seq, id)
  for _, did in ipairs(dids) do redis.call("ZADD", pending_key(did), seq, id) end
end

local function from_pending(id, dids)
  redis.call("ZREM", K_PENDING, id)
  for _, did in ipairs(dids) do redis.call("ZREM", pending_key(did), id) end
end

local function to_inflight(id, deadline, dids)
  redis.call("ZADD", K_INFLIGHT, deadline, id)
  for _, did in ipairs(dids) do redis.call("ZADD", inflight_key(did), deadline, id) end
end

local function from_inflight(id, dids)
  redis.call("ZREM", K_INFLIGHT, id)
  for _, did in ipairs(dids) do redis.call("ZREM", inflight_key(did), id) end
end

-- Messages whose visibility deadline passed become pending again, in their original place.
-- Each in-flight message is moved back at most once per hand-out, so the cost is amortised
-- over the calls that handed it out.
local function requeue_expired(now)
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", K_INFLIGHT, "-inf", now)) do
    local record = redis.call("HGET", K_MSG, id)
    if record then
      local seq, _, dids = parse(record)
      from_inflight(id, dids)
      to_pending(id, seq, dids)
    else
      redis.call("ZREM", K_INFLIGHT, id)
    end
  end
end

local function delete(id)
  local record = redis.call("HGET", K_MSG, id)
  if not record then return 0 end
  local _, _, dids = parse(record)
  redis.call("HDEL", K_MSG, id)
  from_pending(id, dids)
  from_inflight(id, dids)
  return 1
end

-- An empty queue leaves no keys behind (the counter restarts: order only matters among
-- messages that coexist).
local function forget_if_empty()
  if redis.call("HLEN", K_MSG) == 0 then redis.call("DEL", K_SEQ, K_DIDS) end
end
