-- Migration: one message brought over from the Node MPR. ARGV: 1 id, 2 seq (below every native
-- sequence, ordered by receive time), 3 record tail "<size>\t<received ms>[\t<did>...]\n<body>"
-- (an empty body: the document stays in MongoDB), 4 how long to remember imported ids (ms).
-- Returns 1 if imported, 0 if it was already (even if it has been delivered and removed since).
local id, seq, tail, remember = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call("SISMEMBER", Q.imported, id) == 1 or redis.call("HEXISTS", Q.msg, id) == 1 then
  return 0
end
local record = seq .. "\t" .. tail
redis.call("HSET", Q.msg, id, record)
local _, size, _, dids, cold = parse(record)
count_bytes(Q, size)
for _, did in ipairs(dids) do redis.call("HSET", Q.conn, "d:" .. did, 1) end
to_pending(Q, id, tonumber(seq), dids, cold)
redis.call("SADD", Q.imported, id)
redis.call("PEXPIRE", Q.imported, remember)
return 1
