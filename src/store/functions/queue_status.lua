-- ARGV: 1 recipient DID ("" for all). Returns {pending count, bytes the connection holds (-1
-- with a DID: not kept per DID), oldest and newest pending received ms (-1 when none)}, both
-- tiers, from the ends of the pending indexes: O(log N), no scan.
requeue_expired(Q, now_ms())
local did = ARGV[1]
if did == "" then did = nil end
local hot, cold = lane(Q, did, false), lane(Q, did, true)
local count = redis.call("ZCARD", hot) + redis.call("ZCARD", cold)
-- The id at one end (first: lowest sequence, else highest) of both tiers' indexes.
local function at_end(first)
  local index = first and 0 or -1
  local h = redis.call("ZRANGE", hot, index, index, "WITHSCORES")
  local c = redis.call("ZRANGE", cold, index, index, "WITHSCORES")
  if #h == 0 then return c[1] end
  if #c == 0 then return h[1] end
  if (tonumber(h[2]) < tonumber(c[2])) == first then return h[1] end
  return c[1]
end
local function received(id)
  if not id then return -1 end
  local _, _, ms = parse(redis.call("HGET", Q.msg, id))
  return ms
end
local bytes = -1
if not did then bytes = tonumber(redis.call("HGET", Q.conn, "bytes") or "0") end
return {count, bytes, received(at_end(true)), received(at_end(false))}
