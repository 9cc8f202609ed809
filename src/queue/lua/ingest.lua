-- Accept a webhook event exactly once: remember its message id and append
-- the job in one call, so a retry of the same message never makes a second
-- job and a crash between the two steps cannot lose the event.
-- KEYS[1]  dedupe key (<prefix>:seen:<message id>)
-- KEYS[2]  stream
-- ARGV[1]  dedupe TTL, seconds
-- ARGV[2]  envelope JSON
-- ARGV[3]  job id (stored as the dedupe value, for tracing a duplicate)
-- Returns: the stream entry id, or the job id of the first copy when it is a duplicate
--          (as { 1, entry } / { 0, job id })
local first = redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', tonumber(ARGV[1]))
if not first then
  return { 0, redis.call('GET', KEYS[1]) or '' }
end
return { 1, redis.call('XADD', KEYS[2], '*', 'job', ARGV[2]) }
