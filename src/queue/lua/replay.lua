-- Put a dead letter back on its stream. The dead entry is deleted in the same
-- call, and only if it still exists, so two operators replaying at once
-- enqueue the job once.
-- KEYS[1]  dead-letter stream
-- KEYS[2]  target stream
-- ARGV[1]  dead-letter entry id
-- ARGV[2]  envelope JSON to enqueue (attempts reset)
-- Returns: the new stream entry id, or false when the dead letter was gone
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then
  return false
end
return redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
