-- ARGV: 1 recipient DID ("" for all), 2 limit (>= 1), 3 byte limit, 4 "1" to delete,
-- 5 visibility timeout ms, 6 "1" to leave cold messages out (MongoDB is unavailable).
-- Returns {deadline, {id, body, id, body, ...}, due}, oldest first across both tiers; due is 1
-- when the caller must enter the connection in the deadline index at `deadline`. A cold message
-- comes with an empty body and stays in flight with that deadline even when deleting: the
-- caller reads it from MongoDB, then deletes or releases it (settle_cold).
local did, limit, byte_limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local delete_taken, visibility, hot_only = ARGV[4] == "1", tonumber(ARGV[5]), ARGV[6] == "1"
if did == "" then did = nil end
local now = now_ms()
requeue_expired(Q, now)
local deadline = now + visibility
local taken, in_flight = hand_out(Q, did, limit, byte_limit, delete_taken, deadline, hot_only)
if delete_taken then forget_if_empty(Q) end
local due = 0
if in_flight then due = note_due(Q, deadline, now) end
return {deadline, taken, due}
