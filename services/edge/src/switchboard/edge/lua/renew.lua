-- renew.lua: extend the concurrency leases of requests still running on this edge.
--
-- ARGV: lease ms, then pairs of (key id, request id). A lease already released is not
-- brought back (ZADD XX).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV, 2 do
  local leases = 'sb:rl:conc:' .. ARGV[i]
  renewed = renewed + redis.call('ZADD', leases, 'XX', 'CH', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', leases, lease * 2)
end
return renewed
