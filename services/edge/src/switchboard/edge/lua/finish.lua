-- finish.lua: settle admitted requests, atomically, one or many per call: for each,
-- reconcile its TPM reservation with the tokens actually used, charge its monthly quotas,
-- free its concurrency slot.
--
-- ARGV
--   1  window ms of the TPM log
--   2  seconds the month's quota counters are kept
--   then 8 values per request:
--   +1  key id
--   +2  request id
--   +3  reserved tokens (-1: nothing was reserved)
--   +4  actual tokens to keep in the TPM window (-1: keep the reservation as it is)
--   +5  tokens to charge to the monthly token quota (0: none)
--   +6  USD to charge to the monthly budget ('0': none)
--   +7  month 'YYYY-MM' (UTC)
--   +8  '1' to free the request's concurrency slot
--
-- Returns the number of requests settled.

local window, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = nil

local function settle(id, rid, reserved, actual, tokens, usd, month, release)
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
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('ZADD', toklog, now, rid .. ':' .. actual)
      redis.call('INCRBY', toksum, actual)
      redis.call('PEXPIRE', toklog, window)
      redis.call('PEXPIRE', toksum, window)
    end
  end

  if tokens > 0 then
    local tok_key = 'sb:quota:tok:' .. id .. ':' .. month
    redis.call('INCRBY', tok_key, tokens)
    redis.call('EXPIRE', tok_key, keep)
  end
  if tonumber(usd) > 0 then
    local usd_key = 'sb:quota:usd:' .. id .. ':' .. month
    redis.call('INCRBYFLOAT', usd_key, usd)
    redis.call('EXPIRE', usd_key, keep)
  end

  if release == '1' then
    redis.call('ZREM', 'sb:rl:conc:' .. id, rid)
  end
end

local settled = 0
for i = 3, #ARGV, 8 do
  settle(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]),
    tonumber(ARGV[i + 4]), ARGV[i + 5], ARGV[i + 6], ARGV[i + 7])
  settled = settled + 1
end
return settled
