-- The deadline index's step for one connection (see `redeliver` in lib.lua). ARGV: 1 visibility
-- timeout ms. Returns as `redeliver`.
return redeliver(Q, tonumber(ARGV[1]))
