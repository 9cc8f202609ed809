-- Move due jobs from the retry set back to their streams, at most ARGV[2] per
-- call (the caller loops while a full batch comes back). Each job is removed
-- from the set in the same call that adds it to its stream, so concurrent
-- schedulers never move a job twice and never drop one.
-- KEYS[1]  retry sorted set
-- ARGV[1]  now, unix ms
-- ARGV[2]  batch size
-- ARGV[3]  key prefix including the trailing ':' (job and stream keys are
--          derived from it, so a {tagged} prefix keeps them in one slot)
-- ARGV[4]  now as text, for failed_at of an unreadable envelope
-- Returns: { moved, {lateness_ms...}, orphans (id without envelope), poisoned }
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]), 'WITHSCORES')
local now = tonumber(ARGV[1])
local moved, orphans, poisoned = 0, 0, 0
local late = {}
for i = 1, #due, 2 do
  local id = due[i]
  local jobkey = ARGV[3] .. 'job:' .. id
  local env = redis.call('GET', jobkey)
  redis.call('ZREM', KEYS[1], id)
  if env then
    local ok, job = pcall(cjson.decode, env)
    local queue = ok and type(job) == 'table' and job['queue'] or nil
    if type(queue) == 'string' and queue ~= '' then
      redis.call('XADD', ARGV[3] .. 'stream:' .. queue, '*', 'job', env)
      moved = moved + 1
      late[#late + 1] = now - tonumber(due[i + 1])
    else
      redis.call('XADD', ARGV[3] .. 'dead', '*', 'job', env, 'queue', '', 'kind', 'unknown',
        'reason', 'poison', 'error', 'retry envelope has no readable queue', 'attempts', '0',
        'failed_at', ARGV[4])
      poisoned = poisoned + 1
    end
    redis.call('DEL', jobkey)
  else
    orphans = orphans + 1
  end
end
return { moved, late, orphans, poisoned }
