-- One failed credential check of a client address, shared by every replica:
-- GCRA on Redis's clock. KEYS[1]: the address's key. ARGV: interval in
-- microseconds, burst. Returns the wait in microseconds (0: not throttled).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
local nxt = math.max(tat, now) + interval
local allowed_from = nxt - capacity
if now < allowed_from then
  return allowed_from - now
end
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1000)
return 0
