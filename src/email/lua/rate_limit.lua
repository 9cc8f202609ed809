-- One slot of the Resend rate limit, shared by every worker process: a
-- counter per wall-clock second. The caller waits for the next second when
-- this one is full, so N workers together never exceed the limit.
-- KEYS[1]  counter of this second (<prefix>:ratelimit:<unix second>)
-- ARGV[1]  requests allowed per second
-- Returns: 1 when the caller may send now, 0 when this second is full
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], 2000)
end
if n > tonumber(ARGV[1]) then
  return 0
end
return 1
