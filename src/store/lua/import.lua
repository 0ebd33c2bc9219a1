-- Migration: one message brought over from the Node MPR. ARGV: 2 id, 3 seq (below every native
-- sequence, ordered by receive time), 4 record tail "<size>\t<received ms>[\t<did>...]\n<body>"
-- (an empty body: the document stays in MongoDB), 5 how long to remember imported ids (ms).
-- Returns 1 if imported, 0 if it was already (even if it has been delivered and removed since).
local id, seq, tail, remember = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if redis.call("SISMEMBER", K_IMPORTED, id) == 1 or redis.call("HEXISTS", K_MSG, id) == 1 then
  return 0
end
local record = seq .. "\t" .. tail
redis.call("HSET", K_MSG, id, record)
local _, _, _, dids, cold = parse(record)
if #dids > 0 then redis.call("SADD", K_DIDS, unpack(dids)) end
to_pending(id, tonumber(seq), dids, cold)
redis.call("SADD", K_IMPORTED, id)
redis.call("PEXPIRE", K_IMPORTED, remember)
return 1
