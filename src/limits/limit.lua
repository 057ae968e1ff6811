-- One request against an owner's rate (GCRA) and quota (a UTC calendar
-- period), atomically, on Redis's own clock. KEYS[1]: the owner's hash.
-- ARGV: rate interval in microseconds (0: no rate), burst, quota count
-- (0: no quota), period (1 hour, 2 day, 3 month), hits (requests counted).
-- Returns {rate_ok, rate_remaining, rate_reset_s, rate_retry_us,
--          quota_ok, quota_remaining, quota_reset_s}; counts only when both admit.
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_us = now_s * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local hits = tonumber(ARGV[5]) or 1
local h = redis.call('HMGET', KEYS[1], 'tat', 'qs', 'qu')
local tat = tonumber(h[1]) or 0
local qs = tonumber(h[2]) or -1
local qu = tonumber(h[3]) or 0

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function month_of(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function bounds(now)
  if period == 1 then
    local s = now - now % 3600
    return s, s + 3600
  elseif period == 2 then
    local s = now - now % 86400
    return s, s + 86400
  end
  local y, m = month_of(math.floor(now / 86400))
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return days_from_civil(y, m, 1) * 86400, days_from_civil(ny, nm, 1) * 86400
end

local rate_ok, rate_rem, rate_reset, rate_retry = 1, 0, 0, 0
local new_tat = tat
if interval > 0 then
  local capacity = interval * burst
  local nxt = math.max(tat, now_us) + interval * hits
  local allowed_from = nxt - capacity
  if now_us < allowed_from then
    rate_ok, rate_retry = 0, allowed_from - now_us
  else
    new_tat = nxt
    local used = nxt - now_us
    rate_rem = math.floor((capacity - math.min(used, capacity)) / interval)
    rate_reset = math.ceil(used / 1000000)
  end
end

local quota_ok, quota_rem, quota_reset, start, finish, used = 1, 0, 0, 0, 0, 0
if quota > 0 then
  start, finish = bounds(now_s)
  if qs == start then used = qu end
  quota_reset = finish - now_s
  if used + hits > quota then
    quota_ok = 0
  else
    quota_rem = quota - used - hits
  end
end

if rate_ok == 1 and quota_ok == 1 then
  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', new_tat), 'qs', start, 'qu', used + hits)
  -- Kept while it holds anything: until the rate is whole again and the
  -- quota's period ends.
  local keep_ms = math.max(math.ceil((new_tat - now_us) / 1000), (finish - now_s) * 1000)
  redis.call('PEXPIRE', KEYS[1], keep_ms + 1000)
end
return {rate_ok, rate_rem, rate_reset, rate_retry, quota_ok, quota_rem, quota_reset}
