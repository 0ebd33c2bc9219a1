-- A SocketDock socket is gone (disconnect callback, or a send failed). Forgets it and returns
-- the connections noted as bound to it (bounded by socket_attach), whose bindings the caller
-- ends one by one (each its own compare-and-unbind: a connection bound elsewhere since stays).
local bound = redis.call("SMEMBERS", Q.bound)
redis.call("DEL", Q.socket, Q.bound)
return bound
