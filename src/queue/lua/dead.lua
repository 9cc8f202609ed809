-- Move a job to the dead-letter stream and acknowledge its stream entry in
-- one step, so a failed job is either pending or dead, never neither.
-- KEYS[1]  stream the job was read from
-- KEYS[2]  dead-letter stream
-- ARGV[1]  consumer group
-- ARGV[2]  stream entry id, or '' when the job did not come from a stream
-- ARGV[3..9] job, queue, kind, reason, error, attempts, failed_at
-- Returns: id of the dead-letter entry
local id = redis.call('XADD', KEYS[2], '*',
  'job', ARGV[3], 'queue', ARGV[4], 'kind', ARGV[5], 'reason', ARGV[6],
  'error', ARGV[7], 'attempts', ARGV[8], 'failed_at', ARGV[9])
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return id
