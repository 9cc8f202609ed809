-- Schedule the plain-text re-send of a bounced email. Counted on the
-- original email (a bounce of a re-send counts toward the same limit), and
-- marked on the bounced record so that processing the same bounce twice
-- (delivery is at-least-once) schedules one re-send.
-- KEYS[1]  bounced record          KEYS[2]  original record
-- KEYS[3]  new record              KEYS[4]  new record's event list
-- KEYS[5]  record index            KEYS[6]  retry zset
-- KEYS[7]  job envelope key        KEYS[8]  original record's event list
-- ARGV[1]  re-sends the caller saw on the original (compare-and-set)
-- ARGV[2]  most re-sends allowed
-- ARGV[3]  new record id           ARGV[4]  created, unix ms
-- ARGV[5]  job envelope            ARGV[6]  due, unix ms
-- ARGV[7]  job id                  ARGV[8]  history entry for the new record
-- ARGV[9]  history entry for the original
-- ARGV[10..] new record field/value pairs
-- Returns: { 1, n } scheduled as re-send n; { 0, 'duplicate', id }; { 0, 'exhausted', n }; { 0, 'conflict', n }
local done = redis.call('HGET', KEYS[1], 'resend_scheduled')
if done then
  return { 0, 'duplicate', done }
end
local n = tonumber(redis.call('HGET', KEYS[2], 'resend_count') or '0') or 0
if n >= tonumber(ARGV[2]) then
  return { 0, 'exhausted', n }
end
if n ~= tonumber(ARGV[1]) then
  return { 0, 'conflict', n }
end
redis.call('HSET', KEYS[1], 'resend_scheduled', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'resend_count', 1)
local ids = redis.call('HGET', KEYS[2], 'resend_ids')
if ids and ids ~= '' then ids = ids .. ',' .. ARGV[3] else ids = ARGV[3] end
redis.call('HSET', KEYS[2], 'resend_ids', ids)
redis.call('RPUSH', KEYS[8], ARGV[9])
redis.call('HSET', KEYS[3], unpack(ARGV, 10))
redis.call('RPUSH', KEYS[4], ARGV[8])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3])
redis.call('SET', KEYS[7], ARGV[5])
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[7])
return { 1, n + 1 }
