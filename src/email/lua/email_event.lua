-- Record something that happened to an email: append it to the history and
-- move the status forward only (queued < sent < delivery_delayed < delivered
-- < opened < clicked); a terminal status (bounced, complained, failed,
-- suppressed) is never replaced.
-- KEYS[1]  record hash
-- KEYS[2]  record event list
-- ARGV[1]  new status, or '' to only record the event
-- ARGV[2]  rank of the new status
-- ARGV[3]  '1' when the new status is terminal
-- ARGV[4]  history entry (JSON)
-- ARGV[5]  now (RFC 3339)
-- ARGV[6..] extra field/value pairs to set
-- Returns: -1 no such record, 0 recorded without a status change, 1 status changed
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], -500, -1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
if #ARGV > 5 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 6))
end
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'terminal') == '1' then
  return 0
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'status_rank') or '0') or 0
if ARGV[3] == '1' or tonumber(ARGV[2]) > cur then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'status_rank', ARGV[2], 'terminal', ARGV[3])
  return 1
end
return 0
