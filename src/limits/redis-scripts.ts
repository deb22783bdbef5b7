/**
 * Lua scripts of the Redis limiter. Each runs atomically on the server, and all keys it touches
 * are passed in KEYS and share the actor's hash tag, so the scripts also run on Redis Cluster.
 * Times come from the server clock (`TIME`), so replicas with skewed clocks share one window.
 * Scripts that read `TIME` before writing need effects replication, the default since Redis 5.0.
 *
 * A counter whose key has a TTL is a live window. A key without one never comes from these
 * scripts, and it is treated as an ended window and replaced on the next charge.
 */

/** Reads the server clock as epoch milliseconds. */
const NOW = `
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
`;

/**
 * Checks every counter and the lease, then charges all of them or none.
 *
 * KEYS: the n counter keys, then the lease key when a lease is requested.
 * ARGV: n, lease flag (1 or 0), then limit, intervalMs, cost, mode for each counter, then the
 * lease id, max and ttlMs.
 * Returns: allowed (1 or 0), rejected by (-1 for none, the 0-based check index, or -2 for the
 * concurrency lease), in-flight leases (-1 without a lease), then remaining and resetAt for each
 * counter.
 */
export const ADMIT_SCRIPT = `${NOW}
local count = tonumber(ARGV[1])
local hasLease = ARGV[2] == '1'
local used, resetAt, rejected = {}, {}, -1

for i = 1, count do
  local base = 2 + (i - 1) * 4
  local limit = tonumber(ARGV[base + 1])
  local cost = tonumber(ARGV[base + 3])
  local ttl = redis.call('PTTL', KEYS[i])
  used[i] = 0
  resetAt[i] = now + tonumber(ARGV[base + 2])
  if ttl > 0 then
    used[i] = tonumber(redis.call('GET', KEYS[i])) or 0
    resetAt[i] = now + ttl
  end
  local fits
  if ARGV[base + 4] == 'fit' then fits = used[i] + cost <= limit else fits = used[i] < limit end
  if not fits and rejected == -1 then rejected = i - 1 end
end

local inFlight = -1
local leaseKey, leaseId, leaseMax, leaseTtl
if hasLease then
  local base = 2 + count * 4
  leaseKey = KEYS[count + 1]
  leaseId = ARGV[base + 1]
  leaseMax = tonumber(ARGV[base + 2])
  leaseTtl = tonumber(ARGV[base + 3])
  redis.call('ZREMRANGEBYSCORE', leaseKey, '-inf', now)
  inFlight = redis.call('ZCARD', leaseKey)
  if rejected == -1 and inFlight >= leaseMax then rejected = -2 end
end

local reply = {1, -1, inFlight}
if rejected ~= -1 then
  reply[1] = 0
  reply[2] = rejected
else
  for i = 1, count do
    local base = 2 + (i - 1) * 4
    local cost = tonumber(ARGV[base + 3])
    if cost ~= 0 then
      local ttl = redis.call('PTTL', KEYS[i])
      if ttl > 0 then
        used[i] = redis.call('INCRBY', KEYS[i], cost)
        resetAt[i] = now + ttl
      else
        local interval = tonumber(ARGV[base + 2])
        redis.call('SET', KEYS[i], cost, 'PX', interval)
        used[i] = cost
        resetAt[i] = now + interval
      end
    end
  end
  if hasLease then
    redis.call('ZADD', leaseKey, now + leaseTtl, leaseId)
    reply[3] = redis.call('ZCARD', leaseKey)
    if redis.call('PTTL', leaseKey) < leaseTtl then redis.call('PEXPIRE', leaseKey, leaseTtl) end
  end
end

for i = 1, count do
  local limit = tonumber(ARGV[2 + (i - 1) * 4 + 1])
  reply[#reply + 1] = math.max(0, limit - used[i])
  reply[#reply + 1] = resetAt[i]
end
return reply
`;

/**
 * Applies adjustments, clamped at 0, and releases the lease. A refund for an ended window does
 * nothing, and a positive adjustment on an ended window starts a new one.
 *
 * KEYS: the n counter keys, then the lease key when a lease is released.
 * ARGV: n, then delta and intervalMs for each counter, then the lease id when a lease is released.
 */
export const SETTLE_SCRIPT = `
local count = tonumber(ARGV[1])
for i = 1, count do
  local delta = tonumber(ARGV[2 * i])
  if delta ~= 0 then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl > 0 then
      local used = tonumber(redis.call('GET', KEYS[i])) or 0
      local settled = math.max(0, used + delta)
      -- INCRBY keeps the key's TTL, so the window keeps its end.
      if settled ~= used then redis.call('INCRBY', KEYS[i], settled - used) end
    elseif delta > 0 then
      redis.call('SET', KEYS[i], delta, 'PX', tonumber(ARGV[2 * i + 1]))
    end
  end
end
local leaseId = ARGV[2 + 2 * count]
if leaseId then redis.call('ZREM', KEYS[count + 1], leaseId) end
return 0
`;

/**
 * Moves a held lease's expiry to now + ttlMs; a lease not held stays absent.
 *
 * KEYS: the lease key. ARGV: lease id, ttlMs. Returns 1 when the lease was renewed, else 0.
 */
export const RENEW_SCRIPT = `
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
${NOW}
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
`;

/**
 * Reads one counter. KEYS: the counter key. Returns used units and resetAt, or 0 and -1 when no
 * window is live.
 */
export const USAGE_SCRIPT = `
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return {0, -1} end
${NOW}
return {tonumber(redis.call('GET', KEYS[1])) or 0, now + ttl}
`;
