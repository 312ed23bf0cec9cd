-- Open-loop load at a fixed rate for wrk, with coordinated omission corrected, as wrk2 does.
--
-- wrk (4.x) is closed-loop: a connection sends its next request only after the response to
-- the previous one, so a server that stalls is sent fewer requests and its stall is counted
-- once. Here each thread offers requests on a fixed schedule, one slot every INTERVAL_US
-- microseconds, whatever the responses: the next free connection takes the next slot, waiting
-- for it if it is early, sending at once if it is late. A late request (every connection was
-- busy at its slot) is counted from its slot, when it should have been sent, not from when a
-- connection was free to send it; one on time is counted from when it is sent, less the
-- slack of wrk's millisecond timers (TIMER_SLACK_US).
--
-- The printed "open-loop" lines are read by http_bench.py.
--
-- wrk's callbacks do not say which connection they are for, so each request carries its start
-- in an X-Intended header (microseconds), which the backend echoes in its response.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_usec; } open_loop_timeval;
int gettimeofday(open_loop_timeval *tv, void *tz);
]]
local tv = ffi.new("open_loop_timeval")

-- The clock of wrk's timers (gettimeofday), in microseconds.
local function now_us()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

local INTERVAL_US = nil  -- between two slots of this thread

-- wrk -s open-loop.lua URL -- INTERVAL_US
function init(args)
  INTERVAL_US = tonumber(args[1])
  assert(INTERVAL_US and INTERVAL_US > 0, "usage: wrk -s open-loop.lua URL -- INTERVAL_US")
end

local first_slot = nil
local reserved = 0
-- The slots taken by connections that wait to send (a min-heap), and those of them that were
-- late, whose connection sends at once. Every connection's first request comes through
-- delay() too.
local starts, count, late = {}, 0, {}

local function push(value)
  count = count + 1
  local i = count
  starts[i] = value
  while i > 1 do
    local parent = math.floor(i / 2)
    if starts[parent] <= starts[i] then break end
    starts[parent], starts[i] = starts[i], starts[parent]
    i = parent
  end
end

local function pop()
  local top = starts[1]
  starts[1] = starts[count]
  starts[count] = nil
  count = count - 1
  local i = 1
  while true do
    local left, right, low = 2 * i, 2 * i + 1, i
    if left <= count and starts[left] < starts[low] then low = left end
    if right <= count and starts[right] < starts[low] then low = right end
    if low == i then return top end
    starts[low], starts[i] = starts[i], starts[low]
    i = low
  end
end

latencies = {}  -- microseconds, read by done() through thread:get()
unstamped = 0   -- responses below 400 without X-Intended

-- The next slot of the schedule, which starts at the first call.
local function next_slot(now)
  if first_slot == nil then first_slot = now end
  reserved = reserved + 1
  return first_slot + (reserved - 1) * INTERVAL_US
end

function delay()
  local now = now_us()
  local slot = next_slot(now)
  push(slot)
  if slot <= now then
    late[slot] = true
    return 0
  end
  -- wrk's timer fires once gettimeofday, truncated to the millisecond, reaches the
  -- truncated time of now plus the delay.
  return math.ceil((slot - math.floor(now / 1000) * 1000) / 1000)
end

-- wrk's timers are in whole milliseconds: a connection woken for a slot is woken up to 1 ms
-- after it (the delay rounded up), and up to 1 ms later again (the poll's timeout is
-- rounded too). That wait is the client's; past it, the time counts.
local TIMER_SLACK_US = 2000

local function stamped(start)
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["X-Intended"] = string.format("%.0f", start)
  return wrk.format(nil, nil, headers)
end

function request()
  if first_slot == nil then
    -- wrk builds one request to check it before it connects: it takes no slot.
    return stamped(now_us())
  end
  -- The n-th request sent takes the n-th slot. A late one (every connection was busy at its
  -- slot) is counted from its slot. One sent on time is counted from when it is sent, or from
  -- TIMER_SLACK_US after its slot if its connection woke later than that.
  local now, start = now_us(), nil
  if count > 0 then
    local slot = pop()
    if late[slot] then
      late[slot] = nil
      start = slot
    else
      start = math.min(now, slot + TIMER_SLACK_US)
    end
  else
    -- A request sent again after a socket error comes without a delay() call, at once: it
    -- takes a slot of its own.
    local slot = next_slot(now)
    start = math.min(now, slot)
  end
  return stamped(start)
end

function response(status, headers, body)
  local stamp = headers["X-Intended"] or headers["x-intended"]
  if stamp ~= nil then
    latencies[#latencies + 1] = now_us() - tonumber(stamp)
  elseif status < 400 then
    unstamped = unstamped + 1  -- the backend's answer, without its field: the path dropped it
  end
  -- (An error the proxy answered itself has no field; wrk counts it among the non-2xx.)
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local all, missing = {}, 0
  for _, thread in ipairs(threads) do
    for _, value in ipairs(thread:get("latencies")) do all[#all + 1] = value end
    missing = missing + thread:get("unstamped")
  end
  table.sort(all)
  local n = #all
  if n == 0 then
    io.write("open-loop: no stamped responses\n")
    return
  end
  local function at(share) return all[math.max(1, math.ceil(share * n))] / 1000 end
  io.write(string.format("open-loop responses: %d, unstamped %d\n", n, missing))
  io.write(string.format("open-loop latency ms: p50 %.3f p90 %.3f p99 %.3f p99.9 %.3f max %.3f\n",
    at(0.5), at(0.9), at(0.99), at(0.999), all[n] / 1000))
end
