-- ARGV: 1 peer kind, 2 peer address, 3 session id, 4 visibility timeout ms. Binds the live
-- session to the peer; the newest binding wins. Messages pushed under the binding it replaces
-- (a peer that hung or went) go in flight to the new peer at once, oldest first (a bounded
-- step; the deadline index brings the rest). Binding the same peer again only renames the
-- session. Returns as `redeliver`.
if not bound_to(Q, ARGV[1], ARGV[2]) then
  unbind(Q)
  redis.call("HSET", Q.conn, "kind", ARGV[1], "peer", ARGV[2])
end
redis.call("HSET", Q.conn, "session", ARGV[3])
return redeliver(Q, tonumber(ARGV[4]))
