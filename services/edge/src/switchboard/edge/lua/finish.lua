-- finish.lua: settle one admitted request, atomically: reconcile its TPM reservation with
-- the tokens actually used, charge its monthly quotas, free its concurrency slot.
--
-- ARGV
--   1  key id
--   2  request id
--   3  reserved tokens (-1: nothing was reserved)
--   4  actual tokens to keep in the TPM window (-1: keep the reservation as it is)
--   5  tokens to charge to the monthly token quota (0: none)
--   6  USD to charge to the monthly budget ('0': none)
--   7  month 'YYYY-MM' (UTC)
--   8  window ms of the TPM log
--   9  seconds the month's quota counters are kept
--  10  '1' to free the request's concurrency slot
--
-- Returns {tokens now in the TPM window, tokens charged this month, USD charged this month}

local id, rid = ARGV[1], ARGV[2]
local reserved, actual = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, usd = tonumber(ARGV[5]), ARGV[6]
local month, window, keep = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])

local toklog, toksum = 'sb:rl:tok:' .. id, 'sb:rl:toksum:' .. id
if reserved >= 0 and actual >= 0 and actual ~= reserved then
  local member = rid .. ':' .. reserved
  local score = redis.call('ZSCORE', toklog, member)
  if score then
    -- Still in the window: the reservation becomes the actual amount, at the same time.
    redis.call('ZREM', toklog, member)
    redis.call('DECRBY', toksum, reserved)
    if actual > 0 then
      redis.call('ZADD', toklog, score, rid .. ':' .. actual)
      redis.call('INCRBY', toksum, actual)
    end
  elseif actual > 0 then
    -- The reservation already left the window (a long request): count the usage now.
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZADD', toklog, now, rid .. ':' .. actual)
    redis.call('INCRBY', toksum, actual)
    redis.call('PEXPIRE', toklog, window)
    redis.call('PEXPIRE', toksum, window)
  end
end

local usd_key = 'sb:quota:usd:' .. id .. ':' .. month
local tok_key = 'sb:quota:tok:' .. id .. ':' .. month
if tokens > 0 then
  redis.call('INCRBY', tok_key, tokens)
  redis.call('EXPIRE', tok_key, keep)
end
if tonumber(usd) > 0 then
  redis.call('INCRBYFLOAT', usd_key, usd)
  redis.call('EXPIRE', usd_key, keep)
end

if ARGV[10] == '1' then
  redis.call('ZREM', 'sb:rl:conc:' .. id, rid)
end

return {tonumber(redis.call('GET', toksum) or '0'),
        tonumber(redis.call('GET', tok_key) or '0'),
        redis.call('GET', usd_key) or '0'}
