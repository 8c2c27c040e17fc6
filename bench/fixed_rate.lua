-- wrk at a fixed request rate, for bench/chain.py's fixed-rate phase (Debian's wrk has no -R).
--
-- `wrk -tT -cC -s bench/fixed_rate.lua URL -- RATE_PER_THREAD`. wrk calls delay() before
-- every request of every connection and waits that many milliseconds before sending it.
-- Each call takes the thread's next send time on a fixed timeline, one every
-- 1000/RATE_PER_THREAD ms, so the thread sends at that rate whatever the latency, as long
-- as one of its connections is free. If none is (the proxy has fallen behind), the missed
-- send times are dropped rather than sent in a burst; wrk's Requests/sec then shows the
-- shortfall. wrk times each request from its actual send, as in its closed-loop mode.
-- delay() is in whole milliseconds (wrk's timers are), so a send may be up to 0.5 ms off
-- its time; the rate still holds, because the timeline advances by the exact interval.

local ffi = require("ffi")  -- Debian's wrk is built on LuaJIT
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local CLOCK_MONOTONIC = 1
local now_ts = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_ts)
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

local interval  -- ms between two sends of this thread
local next_at   -- this thread's last claimed send time

function init(args)
  interval = 1000 / tonumber(args[1])
end

function delay()
  local now = now_ms()
  next_at = math.max((next_at or now) + interval, now)
  return math.floor(next_at - now + 0.5)
end
