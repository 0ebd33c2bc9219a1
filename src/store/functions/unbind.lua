-- ARGV: 1 peer kind, 2 peer address. Ends the session only if it is still bound to that peer (a
-- newer binding elsewhere wins); what was pushed to it is pending again (a bounded step, the
-- deadline index brings the rest). Returns {1 if it was removed else 0, redeliver's reply}.
if bound_to(Q, ARGV[1], ARGV[2]) then
  unbind(Q)
  return {1, redeliver(Q, 0)}
end
return {0, no_step()}
