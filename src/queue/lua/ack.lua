-- Acknowledge processed entries and delete them, so streams stay bounded.
-- KEYS[1]  stream
-- ARGV[1]  consumer group
-- ARGV[2..] entry ids
-- Returns: number of entries acknowledged
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return acked
