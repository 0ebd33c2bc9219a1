-- ARGV: 1 peer kind, 2 peer address. Ends the session only if it is still bound to that peer (a
-- newer binding elsewhere wins). Returns 1 if it was removed.
if bound_to(Q, ARGV[1], ARGV[2]) then
  unbind(Q)
  return 1
end
return 0
