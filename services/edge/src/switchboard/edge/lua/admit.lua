-- admit.lua: authenticate (when asked) and admit one request, atomically, in one round trip.
--
-- Every layer is checked before anything is recorded, so a refused request consumes
-- nothing. Time is the server's (TIME), so edges with skewed clocks agree. Key names are
-- derived from the key id found here, so this needs one Redis/Valkey primary (not Cluster).
--
-- ARGV
--   1  mode      'id'   the edge knows the key (cache): admit it
--                'hash' look the secret's SHA-256 up, then admit
--                'auth' look the secret's SHA-256 up, admit nothing
--                'fail' record a failed authentication for the IP
--   2  subject   key id (id) or hex SHA-256 of the secret (hash, auth); '' for fail
--   3  ip        client IP; '' turns the per-IP layers off
--   4  request id  (member of the sliding logs and the concurrency leases)
--   5  window    ms of the sliding windows (60000)
--   6  auth failures an IP may make per window (0 = off)
--   7  requests an IP may make per window (0 = off)
--   8  estimated tokens of this request (its TPM reservation)
--   9  month     'YYYY-MM' (UTC) of the quota counters
--  10  lease     ms a concurrency slot lives unless renewed
--  11..15  rpm, tpm, max concurrent (0 = unlimited), USD budget, token quota (-1 = none):
--          the limits to apply in 'id' mode; in 'hash' mode the defaults, overridden by
--          the record's own non-null values
--
-- Returns {status, record json or '', secret pttl, retry ms,
--          rpm limit, rpm remaining, rpm reset ms, tpm limit, tpm remaining, tpm reset ms}
-- status: ok | verify (restricted key: the edge checks the model, then calls in 'id' mode)
--         | unknown | revoked | expired | failed (auth failure recorded) | blocked (IP)
--         | ip_rpm | quota_usd | quota_tokens | rpm | tpm | too_large | concurrency

local mode, subject, ip, rid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local window = tonumber(ARGV[5])
local fail_limit = tonumber(ARGV[6])
local ip_rpm = tonumber(ARGV[7])
local estimate = tonumber(ARGV[8])
local month = ARGV[9]
local lease = tonumber(ARGV[10])
local rpm, tpm, conc = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local budget, quota = tonumber(ARGV[14]), tonumber(ARGV[15])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local horizon = now - window

local failkey = 'sb:ip:fail:' .. ip
local guard = fail_limit > 0 and ip ~= ''

local function reply(status, record, secret_ttl, retry, r_lim, r_rem, r_reset, t_lim, t_rem, t_reset)
  return {status, record or '', secret_ttl or -1, retry or 0,
          r_lim or 0, r_rem or 0, r_reset or 0, t_lim or 0, t_rem or 0, t_reset or 0}
end

local function blocked()
  if not guard then return nil end
  local failures = tonumber(redis.call('GET', failkey) or '0')
  if failures >= fail_limit then
    return reply('blocked', '', -1, math.max(redis.call('PTTL', failkey), 1))
  end
  return nil
end

-- A failed authentication; when it uses up the IP's allowance, the 'retry' field says for
-- how long the IP is blocked from now on (the edge remembers that without asking again).
local function failure(status, record, secret_ttl)
  local blocked_for = 0
  if guard then
    local failures = redis.call('INCR', failkey)
    if failures == 1 then redis.call('PEXPIRE', failkey, window) end
    if failures >= fail_limit then blocked_for = math.max(redis.call('PTTL', failkey), 1) end
  end
  return reply(status, record, secret_ttl, blocked_for)
end

local refused = blocked()
if refused then return refused end
if mode == 'fail' then return failure('failed') end

local id, record, secret_ttl = subject, '', -1
if mode == 'hash' or mode == 'auth' then
  local secret_key = 'sb:secret:' .. subject
  id = redis.call('GET', secret_key)
  if not id then return failure('unknown') end
  record = redis.call('GET', 'sb:keyrec:' .. id)
  if not record then return failure('unknown') end
  secret_ttl = redis.call('PTTL', secret_key)
  local rec = cjson.decode(record)
  if rec.status ~= 'active' then return failure('revoked', record, secret_ttl) end
  if type(rec.expires_at) == 'number' and rec.expires_at * 1000 <= now then
    return failure('expired', record, secret_ttl)
  end
  if mode == 'auth' then return reply('ok', record, secret_ttl) end
  local function listed(value) return type(value) == 'table' and #value > 0 end
  if listed(rec.allowed_models) or listed(rec.allowed_tiers) then
    return reply('verify', record, secret_ttl)
  end
  local function given(value) return type(value) == 'number' end
  if given(rec.rpm) then rpm = rec.rpm end
  if given(rec.tpm) then tpm = rec.tpm end
  if given(rec.max_concurrent) then conc = rec.max_concurrent end
  if given(rec.monthly_budget_usd) then budget = rec.monthly_budget_usd end
  if given(rec.monthly_token_quota) then quota = rec.monthly_token_quota end
end

-- Check every layer; record nothing yet.
local status, retry = 'ok', 0

local ipreq = 'sb:ip:req:' .. ip
if ip_rpm > 0 and ip ~= '' then
  redis.call('ZREMRANGEBYSCORE', ipreq, '-inf', horizon)
  if redis.call('ZCARD', ipreq) >= ip_rpm then
    local oldest = redis.call('ZRANGE', ipreq, 0, 0, 'WITHSCORES')
    status, retry = 'ip_rpm', tonumber(oldest[2]) + window - now
  end
end

if status == 'ok' and budget >= 0 then
  local spent = tonumber(redis.call('GET', 'sb:quota:usd:' .. id .. ':' .. month) or '0')
  if spent >= budget then status = 'quota_usd' end
end
if status == 'ok' and quota >= 0 then
  local used = tonumber(redis.call('GET', 'sb:quota:tok:' .. id .. ':' .. month) or '0')
  if used >= quota then status = 'quota_tokens' end
end

local reqlog = 'sb:rl:req:' .. id
local r_rem, r_reset = 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', reqlog, '-inf', horizon)
  local count = redis.call('ZCARD', reqlog)
  r_rem = rpm - count
  if count > 0 then
    local newest = redis.call('ZRANGE', reqlog, -1, -1, 'WITHSCORES')
    r_reset = tonumber(newest[2]) + window - now
  end
  if status == 'ok' and count >= rpm then
    local oldest = redis.call('ZRANGE', reqlog, 0, 0, 'WITHSCORES')
    status, retry = 'rpm', tonumber(oldest[2]) + window - now
  end
end

-- TPM: a sliding log of reservations, member '<request id>:<tokens>', with their sum.
local toklog, toksum = 'sb:rl:tok:' .. id, 'sb:rl:toksum:' .. id
local function amount(member) return tonumber(string.match(member, ':(%d+)$')) or 0 end
local t_rem, t_reset = 0, 0
if tpm > 0 then
  while true do
    local expired = redis.call('ZRANGEBYSCORE', toklog, '-inf', horizon, 'LIMIT', 0, 500)
    if #expired == 0 then break end
    local freed = 0
    for _, member in ipairs(expired) do freed = freed + amount(member) end
    redis.call('ZREM', toklog, unpack(expired))
    redis.call('DECRBY', toksum, freed)
  end
  local used = math.max(tonumber(redis.call('GET', toksum) or '0'), 0)
  t_rem = math.max(tpm - used, 0)
  local newest = redis.call('ZRANGE', toklog, -1, -1, 'WITHSCORES')
  if #newest > 0 then t_reset = tonumber(newest[2]) + window - now end
  if status == 'ok' and estimate > tpm then
    status, retry = 'too_large', window
  elseif status == 'ok' and used + estimate > tpm then
    -- Retry when enough of the oldest reservations have left the window.
    local need, start = used + estimate - tpm, 0
    status, retry = 'tpm', window
    while need > 0 do
      local batch = redis.call('ZRANGE', toklog, start, start + 99, 'WITHSCORES')
      if #batch == 0 then break end
      for i = 1, #batch, 2 do
        need = need - amount(batch[i])
        if need <= 0 then
          retry = tonumber(batch[i + 1]) + window - now
          break
        end
      end
      start = start + 100
    end
  end
end

local leases = 'sb:rl:conc:' .. id
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  if status == 'ok' and redis.call('ZCARD', leases) >= conc then
    status, retry = 'concurrency', 1000
  end
end

if status ~= 'ok' then
  return reply(status, record, secret_ttl, math.max(retry, 1),
               rpm, math.max(r_rem, 0), r_reset, tpm, t_rem, t_reset)
end

-- Admitted: record it in every layer.
if ip_rpm > 0 and ip ~= '' then
  redis.call('ZADD', ipreq, now, rid)
  redis.call('PEXPIRE', ipreq, window)
end
if rpm > 0 then
  redis.call('ZADD', reqlog, now, rid)
  redis.call('PEXPIRE', reqlog, window)
  r_rem, r_reset = r_rem - 1, window
end
if tpm > 0 then
  redis.call('ZADD', toklog, now, rid .. ':' .. estimate)
  redis.call('INCRBY', toksum, estimate)
  redis.call('PEXPIRE', toklog, window)
  redis.call('PEXPIRE', toksum, window)
  t_rem, t_reset = math.max(t_rem - estimate, 0), window
end
if conc > 0 then
  redis.call('ZADD', leases, now + lease, rid)
  redis.call('PEXPIRE', leases, lease * 2)
end
return reply('ok', record, secret_ttl, 0, rpm, r_rem, r_reset, tpm, t_rem, t_reset)
