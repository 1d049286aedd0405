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

// renewScript: KEYS semaphores, ARGV ttl ms then one holder per key → the
// slots renewed: a holder whose slot had expired is not taken back
// (another may hold it now).
var renewScript = redis.NewScript(serverNow + `
local ttl, n = tonumber(ARGV[1]), 0
for i, k in ipairs(KEYS) do
  if redis.call('ZADD', k, 'XX', 'CH', now + ttl, ARGV[i+1]) == 1 then
    redis.call('PEXPIRE', k, ttl * 4)
    n = n + 1
  end
end
return n`)

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

// leaseScript: KEYS[1] lease, ARGV owner, ttl ms → 1 when owner holds
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

// dayExpire (Lua) drops the buckets of a day (hash h, index idx) that
// stopped counting at now, and returns the total that still counts.
const dayExpire = `
local function expire(h, idx, now)
  local gone = redis.call('ZRANGEBYSCORE', idx, '-inf', now)
  if #gone > 0 then
    local n = 0
    for _, f in ipairs(gone) do
      n = n + tonumber(redis.call('HGET', h, f) or '0')
      redis.call('HDEL', h, f)
    end
    redis.call('ZREMRANGEBYSCORE', idx, '-inf', now)
    redis.call('HINCRBY', h, 'total', -n)
  end
  return tonumber(redis.call('HGET', h, 'total') or '0')
end
local function oldest(idx)
  local r = redis.call('ZRANGE', idx, 0, 0, 'WITHSCORES')
  if #r == 0 then return 0 end
  return tonumber(r[2])
end
`

// dayTakeScript: KEYS day hash, index, block; ARGV field, n, limit, now
// ms, the field's expiry ms, keep ms → {1, total, 0, block, oldest} when n
// recipients were added to field, {0, total, free, block, oldest} when the
// day is blocked (free: the block's end) or has no room for n (free: when
// enough buckets stop counting; 0 if not by time alone).
var dayTakeScript = redis.NewScript(dayExpire + `
local now, n, limit = tonumber(ARGV[4]), tonumber(ARGV[2]), tonumber(ARGV[3])
local total = expire(KEYS[1], KEYS[2], now)
local block = tonumber(redis.call('GET', KEYS[3]) or '0')
if now < block then return {0, total, block, block, oldest(KEYS[2])} end
if total + n > limit then
  local need, acc = total + n - limit, 0
  local r = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #r, 2 do
    acc = acc + tonumber(redis.call('HGET', KEYS[1], r[i]) or '0')
    if acc >= need then return {0, total, tonumber(r[i+1]), block, oldest(KEYS[2])} end
  end
  return {0, total, 0, block, oldest(KEYS[2])}
end
redis.call('HINCRBY', KEYS[1], ARGV[1], n)
redis.call('HINCRBY', KEYS[1], 'total', n)
redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]))
return {1, total + n, 0, block, oldest(KEYS[2])}`)

// dayMoveScript: KEYS day hash, index; ARGV now ms, destination field
// ("": none, a release), its expiry ms, keep ms, then field, n pairs → the
// recipients held in each field (as many as are still there) are taken
// out, and with a destination all of them are added to it.
var dayMoveScript = redis.NewScript(dayExpire + `
local total = expire(KEYS[1], KEYS[2], tonumber(ARGV[1]))
local taken, add = 0, 0
for i = 5, #ARGV, 2 do
  local f, n = ARGV[i], tonumber(ARGV[i+1])
  local have = tonumber(redis.call('HGET', KEYS[1], f) or '0')
  local d = math.min(n, have)
  if d > 0 and d == have then
    redis.call('HDEL', KEYS[1], f)
    redis.call('ZREM', KEYS[2], f)
  elseif d > 0 then
    redis.call('HINCRBY', KEYS[1], f, -d)
  end
  taken, add = taken + d, add + n
end
if ARGV[2] == '' then add = 0 end
if add > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[2], add)
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'total', add - taken)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
return total + add - taken`)

// dayAddScript: KEYS day hash, index; ARGV now ms, keep ms, then field,
// expiry ms, n triples → each field that still counts at now holds at
// least n.
var dayAddScript = redis.NewScript(dayExpire + `
local now = tonumber(ARGV[1])
local total = expire(KEYS[1], KEYS[2], now)
for i = 3, #ARGV, 3 do
  local f, e, n = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
  local have = tonumber(redis.call('HGET', KEYS[1], f) or '0')
  if e > now and n > have then
    redis.call('HSET', KEYS[1], f, n)
    redis.call('ZADD', KEYS[2], e, f)
    total = total + n - have
  end
end
redis.call('HSET', KEYS[1], 'total', total)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return total`)

// dayBlockScript: KEYS block; ARGV until ms, ttl ms → the block is until
// unless it already lasts longer.
var dayBlockScript = redis.NewScript(`
local b = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > b then redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2])) end
return 1`)

// dayViewScript: KEYS day hash, index, block of each mailbox; ARGV now ms
// → {total, oldest, block} of each, in order.
var dayViewScript = redis.NewScript(dayExpire + `
local now, out = tonumber(ARGV[1]), {}
for i = 1, #KEYS, 3 do
  out[#out+1] = expire(KEYS[i], KEYS[i+1], now)
  out[#out+1] = oldest(KEYS[i+1])
  out[#out+1] = tonumber(redis.call('GET', KEYS[i+2]) or '0')
end
return out`)

// liveScript: KEYS instances; ARGV at most → the names of the instances
// whose heartbeat's lease holds now (the server's clock).
var liveScript = redis.NewScript(serverNow + `
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'LIMIT', 0, tonumber(ARGV[1]))`)
