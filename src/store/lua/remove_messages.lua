-- ARGV: 2.. message ids. Returns {how many existed and were removed, {trashed id...}}.
local removed = 0
for i = 2, #ARGV do removed = removed + delete(ARGV[i]) end
forget_if_empty()
return with_trashed(removed)
