package cluster

import "github.com/redis/go-redis/v9"

// The scripts. Each sorted set holds members scored by the time they stop
// counting (ms since the epoch): removing the scores at or below now and
// counting the rest is a count of what holds now, and a member whose
// holder died stops counting at its score without anyone's help.

// serverNow (Lua) is the server's clock in ms, for leases.
const serverNow = `local t = redis.call('TIME'); local now = t[1]*1000 + math.floor(t[2]/1000)
`

// heartbeatScript: KEYS[1] instances, KEYS[2] epoch, ARGV instance, ttl
// ms, a new epoch → {live count, epoch}. The epoch is set once per life of
// the store's data: a different one means the store restarted empty.
var heartbeatScript = redis.NewScript(serverNow + `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
local e = redis.call('GET', KEYS[2])
if not e then e = ARGV[3]; redis.call('SET', KEYS[2], e) end
return {redis.call('ZCARD', KEYS[1]), e}`)

// semAcquireScript: KEYS[1] semaphore, ARGV holder, limit, ttl ms → 1 when
// the holder holds one of limit slots (now or already), 0 when all are
// held by live holders.
var semAcquireScript = redis.NewScript(serverNow + `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 4)
  return 1
end
return 0`)

// forgetScript: KEYS[1] semaphore, ARGV prefix → removes the members
// whose name starts with prefix (a dead life's holders).
var forgetScript = redis.NewScript(`
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #ARGV[1]) == ARGV[1] then redis.call('ZREM', KEYS[1], m); n = n + 1 end
end
return n`)

// renewScript: KEYS[1] semaphore, ARGV holder, ttl ms → 1 if renewed, 0 if
// the holder's slot had expired (it is not taken back: another may hold
// it now).
var renewScript = redis.NewScript(serverNow + `
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
  return 1
end
return 0`)

// windowTakeScript: KEYS[1] window, ARGV member, limit, now ms, until ms,
// keep ms → {1, 0} when the member was added (it counts until until), or
// {0, free} when limit members count at now: free is when enough of them
// stop counting for one more (0: not by time alone within the horizon).
var windowTakeScript = redis.NewScript(`
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[2])
if n < limit then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
  return {1, 0}
end
local r = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
return {0, tonumber(r[2])}`)

// casScript: KEYS[1] value, ARGV old, new, ttl ms → 1 when the value was old
// ("" for none) and is new now, 0 when it was something else.
var casScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if (v or '') ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1`)

// leaseRenewScript: KEYS[1] lease, ARGV owner, ttl ms → 1 when owner holds
// it (taken now or renewed), 0 when another does.
var leaseScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0`)

// leaseReleaseScript: KEYS[1] lease, ARGV owner → deletes it only if owner
// holds it.
var leaseReleaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)
