-- Records a SocketDock socket (on its connect callback or any frame). ARGV: 1 send URL,
-- 2 disconnect URL, 3 how long to remember it without news (ms): a socket whose disconnect
-- callback was lost is forgotten then, with its list of bound connections.
redis.call("HSET", Q.socket, "send", ARGV[1], "disconnect", ARGV[2])
redis.call("PEXPIRE", Q.socket, tonumber(ARGV[3]))
redis.call("PEXPIRE", Q.bound, tonumber(ARGV[3]))
return 1
