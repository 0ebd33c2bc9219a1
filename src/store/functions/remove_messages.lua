-- ARGV: 1.. message ids. Returns {how many existed and were removed, {trashed id...}}.
local removed = 0
for i = 1, #ARGV do removed = removed + delete(Q, ARGV[i]) end
forget_if_empty(Q)
return {removed, Q.trashed}
