-- Claim entries that another consumer left unacknowledged for longer than
-- the visibility timeout. An entry already delivered more than max_deliveries
-- times is poison: it goes to the dead letters instead of crashing yet
-- another worker.
-- KEYS[1]  stream
-- KEYS[2]  dead-letter stream
-- ARGV[1]  consumer group
-- ARGV[2]  this consumer
-- ARGV[3]  minimum idle time, ms
-- ARGV[4]  start cursor
-- ARGV[5]  most entries to claim
-- ARGV[6]  max deliveries
-- ARGV[7]  queue name
-- ARGV[8]  now, unix ms
-- Returns: { next cursor, { {id, job}... }, { kind of each poisoned entry... } }
local res = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out, poisoned = {}, {}
local max = tonumber(ARGV[6])
for _, entry in ipairs(res[2]) do
  local id, fields = entry[1], entry[2]
  local job = ''
  for i = 1, #fields, 2 do
    if fields[i] == 'job' then job = fields[i + 1] end
  end
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local deliveries = (p[1] and tonumber(p[1][4])) or 1
  if deliveries > max then
    local ok, decoded = pcall(cjson.decode, job)
    local kind = ok and type(decoded) == 'table' and decoded['kind'] or 'unknown'
    if type(kind) ~= 'string' then kind = 'unknown' end
    redis.call('XADD', KEYS[2], '*', 'job', job, 'queue', ARGV[7], 'kind', kind,
      'reason', 'poison', 'error', 'delivered ' .. deliveries .. ' times without an acknowledgement',
      'attempts', tostring(deliveries), 'failed_at', ARGV[8])
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    poisoned[#poisoned + 1] = kind
  else
    out[#out + 1] = { id, job }
  end
end
return { res[1], out, poisoned }
