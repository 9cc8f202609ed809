-- Hand a job over to the retry set: store its envelope, add it to the set at
-- its due time and (when it came from a stream) acknowledge and delete that
-- entry -- all at once, so a job is never acknowledged before its retry exists.
-- KEYS[1]  stream the job was read from
-- KEYS[2]  retry sorted set
-- KEYS[3]  job envelope key
-- ARGV[1]  consumer group
-- ARGV[2]  stream entry id, or '' for a job scheduled directly
-- ARGV[3]  envelope JSON
-- ARGV[4]  due time, unix ms
-- ARGV[5]  job id (the sorted-set member)
-- Returns: 1
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return 1
