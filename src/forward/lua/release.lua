-- Release parked deliveries of a resumed subscription back onto the
-- webhooks stream, oldest first, at most ARGV[1] per call (the caller loops).
-- Each delivery leaves the list in the same call that enqueues it.
-- KEYS[1]  parked list (<prefix>:parked:<name>)
-- KEYS[2]  webhooks stream
-- ARGV[1]  batch size
-- Returns: number released
local moved = 0
for _ = 1, tonumber(ARGV[1]) do
  local env = redis.call('LPOP', KEYS[1])
  if not env then
    break
  end
  redis.call('XADD', KEYS[2], '*', 'job', env)
  moved = moved + 1
end
return moved
