-- Create a delivery record and (unless it is already settled, e.g. a
-- suppressed recipient) queue its send job, in one step. With an
-- idempotency key, a second request with the same key gets the first id and
-- creates nothing.
-- KEYS[1]  idempotency key (<prefix>:idem:<key>; unused when ARGV[1] ~= '1')
-- KEYS[2]  record hash
-- KEYS[3]  record event list
-- KEYS[4]  record index (zset by created ms)
-- KEYS[5]  emails stream
-- ARGV[1]  '1' when the request carried an idempotency key
-- ARGV[2]  record id
-- ARGV[3]  created, unix ms
-- ARGV[4]  job envelope, or '' for no job
-- ARGV[5]  idempotency TTL, seconds
-- ARGV[6]  first history entry (JSON)
-- ARGV[7]  most records kept (the oldest are dropped past it)
-- ARGV[8]  key prefix with trailing ':'
-- ARGV[9..] record field/value pairs
-- Returns: { 1, id } when created, { 0, existing id } for a repeated key
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then
    return { 0, existing }
  end
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[5]))
end
redis.call('HSET', KEYS[2], unpack(ARGV, 9))
redis.call('RPUSH', KEYS[3], ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[5], '*', 'job', ARGV[4])
end
local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[7])
if excess > 0 then
  local old = redis.call('ZPOPMIN', KEYS[4], math.min(excess, 10))
  for i = 1, #old, 2 do
    redis.call('DEL', ARGV[8] .. 'email:' .. old[i], ARGV[8] .. 'email:' .. old[i] .. ':events')
  end
end
return { 1, ARGV[2] }
