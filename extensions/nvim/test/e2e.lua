-- End-to-end test of kode.nvim against the real kode-rpc server.
-- Run by test/run.sh:
--   nvim --headless -u NONE -c "set rtp+=<plugin dir>" -c "luafile test/e2e.lua"
-- Environment: KODE_NVIM_TMP (scratch dir), KODE_NVIM_PY (python with kode_rpc),
-- KODE_NVIM_RESULT (file that receives the log).
-- Every step is inside pcall: a Lua error would otherwise hang headless nvim.

local tmp = assert(os.getenv("KODE_NVIM_TMP"), "KODE_NVIM_TMP not set")
local py = os.getenv("KODE_NVIM_PY") or "python3"
local result_file = os.getenv("KODE_NVIM_RESULT") or (tmp .. "/result.txt")

local out = io.open(result_file, "w")
local function log(msg)
  io.stderr:write(msg .. "\n")
  if out then
    out:write(msg .. "\n")
    out:flush()
  end
end

local checks = 0
local function check(cond, what)
  if not cond then
    error("FAILED: " .. what, 2)
  end
  checks = checks + 1
  log("  ok: " .. what)
end

local function wait(ms, cond, what)
  local ok = vim.wait(ms, cond, 20)
  if not ok then
    error("TIMEOUT after " .. ms .. " ms waiting for: " .. what, 2)
  end
end

local function read_file(path)
  local f = io.open(path, "r")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, s)
  local f = assert(io.open(path, "w"))
  f:write(s)
  f:close()
end

local function buf_text(buf)
  return table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), "\n")
end

local function has_line(buf, line)
  for _, l in ipairs(vim.api.nvim_buf_get_lines(buf, 0, -1, false)) do
    if l == line then
      return true
    end
  end
  return false
end

local function main()
  local version = vim.version()
  local has010 = vim.fn.has("nvim-0.10") == 1
  log(string.format("nvim %d.%d.%d (%s path)", version.major, version.minor, version.patch,
    has010 and "0.10+: approval/request in the rpc coroutine" or "0.7-0.9: permission_required + agent/decide"))

  local work = tmp .. "/work"
  vim.fn.mkdir(work, "p")
  vim.fn.mkdir(tmp .. "/data", "p")

  vim.cmd("runtime plugin/kode.lua")
  check(vim.fn.exists(":KodeChat") == 2 and vim.fn.exists(":KodeAgents") == 2, "commands defined by plugin/kode.lua")

  local kode = require("kode")
  local discovery = require("kode.discovery")
  local errors = require("kode.errors")

  -- kode.errors mirrors the schema's `errors` (the server's one definition of its codes).
  local schema_json = vim.fn.system({ py, "-m", "kode_rpc", "schema" })
  check(vim.v.shell_error == 0, "kode-rpc schema ran")
  local schema = vim.fn.json_decode(schema_json)
  local from_schema = {}
  for _, e in ipairs(schema.errors or {}) do
    from_schema[e.name] = e.code
  end
  check(next(from_schema) ~= nil, "the schema lists the error codes")
  local same = vim.deep_equal(from_schema, errors.codes)
  check(same, "lua/kode/errors.lua matches the schema's errors" .. (same and "" or ": schema "
    .. vim.inspect(from_schema) .. " vs plugin " .. vim.inspect(errors.codes)))

  -- Discovery order.
  local c1, s1 = discovery.resolve({ cmd = { "x", "y" } })
  check(s1 == "config" and c1[1] == "x" and c1[2] == "y", "discovery: explicit cmd first")
  -- a bundled binary in the plugin folder comes before PATH
  local fake_root = tmp .. "/fake-plugin"
  vim.fn.mkdir(fake_root .. "/bin", "p")
  vim.fn.writefile({ "#!/bin/sh", "exit 0" }, fake_root .. "/bin/kode-rpc")
  vim.fn.setfperm(fake_root .. "/bin/kode-rpc", "rwxr-xr-x")
  local cb, sb = discovery.resolve({ plugin_root = fake_root })
  check(sb == "bundled" and cb[1] == fake_root .. "/bin/kode-rpc" and cb[2] == "serve",
    "discovery: bundled binary before PATH")
  local c2, s2 = discovery.resolve({ plugin_root = tmp .. "/no-such-plugin" })
  if vim.fn.executable("kode-rpc") == 1 then
    check(s2 == "path" and c2[1] == "kode-rpc", "discovery: kode-rpc on PATH second")
  else
    check(s2 == "python" and c2[3] == "kode_rpc", "discovery: python -m kode_rpc last")
  end

  local events = {}
  kode.setup({
    cmd = { py, "-m", "kode_rpc", "serve", "--log-level", "WARNING" },
    data_dir = tmp .. "/data",
    work_dir = work,
    model = { provider = "echo" },
    permission = { mode = "approval" },
    on_event = function(env)
      table.insert(events, env)
    end,
  })

  local function done_count(agent_id)
    local n = 0
    for _, e in ipairs(events) do
      if e.agentId == agent_id and e.event.type == "done" and not e.replay then
        n = n + 1
      end
    end
    return n
  end
  local function done_reason(agent_id)
    local r
    for _, e in ipairs(events) do
      if e.agentId == agent_id and e.event.type == "done" and not e.replay then
        r = e.event.reason
      end
    end
    return r
  end

  -- 1. :KodeChat creates an agent and opens its buffer.
  log("step: :KodeChat")
  vim.cmd("KodeChat")
  wait(20000, function()
    return kode.current ~= nil and kode._chat.get(kode.current) ~= nil
      and vim.api.nvim_get_current_buf() == kode._chat.get(kode.current).buf
  end, "chat buffer of a new agent")
  local echo_id = kode.current
  local echo_buf = kode._chat.get(echo_id).buf
  check(vim.api.nvim_buf_get_name(echo_buf):match("kode://" .. echo_id .. "$") ~= nil, "buffer named kode://<agentId>")
  check(vim.g.kode_agent_id == echo_id, "agent id stored in vim.g.kode_agent_id")
  local info = kode.info()
  check(info.state == "ready" and info.server and info.server.serverInfo.name == "kode-rpc", "initialized kode-rpc")
  check(type(info.server.dataDir) == "string" and info.server.dataDir:find(tmp, 1, true) == 1,
    "server uses data_dir (KODE_DATA_DIR)")

  -- 2. :KodeSend streams the reply into the buffer.
  log("step: :KodeSend hello")
  local chunks_before = kode.stats.text_chunks
  vim.cmd("KodeSend hello streaming world")
  wait(20000, function()
    return done_count(echo_id) >= 1
  end, "done of the first turn")
  wait(5000, function()
    return has_line(echo_buf, "hello streaming world")
  end, "streamed reply in the chat buffer")
  check(has_line(echo_buf, "> hello streaming world"), "user prompt shown")
  check(kode.stats.text_chunks - chunks_before >= 2, "reply arrived as several text_chunk deltas ("
    .. (kode.stats.text_chunks - chunks_before) .. ")")

  -- 3. Draft in the buffer + :KodeSend without args; a multi-line reply is split on newlines.
  log("step: draft + :KodeSend (multi-line)")
  local last = vim.api.nvim_buf_line_count(echo_buf)
  vim.api.nvim_buf_set_lines(echo_buf, last - 1, last, false, { "first line", "second line" })
  vim.api.nvim_win_set_cursor(0, { vim.api.nvim_buf_line_count(echo_buf), 0 })
  vim.cmd("KodeSend")
  wait(20000, function()
    return done_count(echo_id) >= 2
  end, "done of the second turn")
  wait(5000, function()
    return has_line(echo_buf, "second line") and has_line(echo_buf, "> second line")
  end, "multi-line reply rendered")
  local lines = vim.api.nvim_buf_get_lines(echo_buf, 0, -1, false)
  check(lines[#lines] == "", "draft cleared after sending")
  local idx
  for i, l in ipairs(lines) do
    if l == "> first line" then
      idx = i
    end
  end
  check(idx and lines[idx + 1] == "> second line" and lines[idx + 2] == "first line"
    and lines[idx + 3] == "second line", "prompt and reply lines in order:\n" .. buf_text(echo_buf))

  -- Helper: an agent whose scripted model writes a file through fs_write.
  local function file_agent(script)
    local id
    kode.new_agent({
      model = { provider = "scripted", script = script },
      permission = { mode = "approval" },
    }, function(err, ag)
      if err then
        error("agent/create failed: " .. vim.inspect(err))
      end
      id = ag.agentId
    end)
    wait(10000, function()
      return id ~= nil and kode._chat.get(id) ~= nil
    end, "agent/create")
    return id, kode._chat.get(id).buf
  end

  local real_select = vim.ui.select
  local prompts = {}
  local function answer_with(choice, async)
    vim.ui.select = function(items, opts, on_choice)
      if opts and opts.kind == "kode_approval" then
        table.insert(prompts, { choice = choice, prompt = opts.prompt })
        if async then
          vim.defer_fn(function()
            on_choice(choice)
          end, 50)
        else
          on_choice(choice)
        end
        return
      end
      return real_select(items, opts, on_choice)
    end
  end

  -- 4. Approval: Allow -> the file is written.
  log("step: approval Allow")
  local req0, dec0 = kode.stats.approval_requests, kode.stats.decides
  answer_with("Allow", true)
  local allow_id, allow_buf = file_agent({
    { toolCalls = { { name = "fs_write", input = { path = "allowed.txt", content = "ALLOWED\n" } } } },
    { text = "wrote allowed.txt" },
  })
  kode.send("please write", allow_id)
  wait(20000, function()
    return done_count(allow_id) >= 1
  end, "done after Allow")
  check(#prompts == 1, "vim.ui.select asked once")
  check(read_file(work .. "/allowed.txt") == "ALLOWED\n", "Allow: file written by fs_write")
  if has010 then
    check(kode.stats.approval_requests == req0 + 1 and kode.stats.decides == dec0,
      "0.10+: answered approval/request (no agent/decide)")
  else
    check(kode.stats.approval_requests == req0 and kode.stats.decides == dec0 + 1,
      "0.7: answered permission_required with agent/decide (no approval/request)")
  end
  wait(5000, function()
    return buf_text(allow_buf):find("%[tool%] fs_write .* %[COMPLETED") ~= nil
      and has_line(allow_buf, "wrote allowed.txt")
  end, "tool line COMPLETED and reply in the chat buffer")

  -- 5. Approval: Deny -> the file stays untouched.
  log("step: approval Deny")
  write_file(work .. "/denied.txt", "ORIGINAL\n")
  answer_with("Deny", false)
  prompts = {}
  local deny_id, deny_buf = file_agent({
    { toolCalls = { { name = "fs_write", input = { path = "denied.txt", content = "CHANGED\n" } } } },
    { text = "could not write" },
  })
  kode.send("please write", deny_id)
  wait(20000, function()
    return done_count(deny_id) >= 1
  end, "done after Deny")
  check(#prompts == 1, "vim.ui.select asked once")
  check(read_file(work .. "/denied.txt") == "ORIGINAL\n", "Deny: file untouched")
  wait(5000, function()
    return buf_text(deny_buf):find("%[tool%] fs_write .* %[DENIED") ~= nil
  end, "tool line DENIED in the chat buffer")

  -- 6. Always allow: asked once, then remembered (server-side on 0.10+, by the plugin on 0.7).
  log("step: approval Always allow")
  answer_with("Always allow", true)
  prompts = {}
  local always_id = file_agent({
    { toolCalls = { { name = "fs_write", input = { path = "a1.txt", content = "1" } } } },
    { toolCalls = { { name = "fs_write", input = { path = "a2.txt", content = "2" } } } },
    { text = "both written" },
  })
  kode.send("write two", always_id)
  wait(20000, function()
    return done_count(always_id) >= 1
  end, "done after Always allow")
  check(#prompts == 1, "Always allow: asked once for two writes")
  check(read_file(work .. "/a1.txt") == "1" and read_file(work .. "/a2.txt") == "2", "Always allow: both files written")

  -- 6b. Chunks with newlines inside deltas, and a send queued behind a running turn.
  log("step: newline-splitting chunks + queued send")
  local q_id, q_buf = file_agent({
    { delayMs = 300, chunks = { "line A\nli", "ne B\n", "line C" } },
    { text = "second reply" },
  })
  kode.send("q1", q_id)
  kode.send("q2", q_id)
  wait(20000, function()
    return done_count(q_id) >= 2
  end, "two turns done")
  local want = "> q1\nline A\nline B\nline C\n> q2\nsecond reply"
  wait(5000, function()
    return buf_text(q_buf):find(want, 1, true) ~= nil
  end, "chunks split on newlines; queued prompt shown when its turn starts:\n" .. buf_text(q_buf))
  check(true, "chunks split on newlines and queued prompt in order")
  log(buf_text(allow_buf))
  log(buf_text(deny_buf))

  -- 6b. kode.compact (:KodeCompact) answers; two short exchanges stay as they are.
  log("step: compact")
  local compacted
  kode.compact("the replies", q_id, function(err, res)
    compacted = err or res
  end)
  wait(10000, function()
    return compacted ~= nil
  end, "agent/compact answered")
  check(compacted.compressed == false and compacted.compactedMessages == 0, "compact: nothing to summarise yet")

  -- 7. :KodeInterrupt stops a slow turn; done reason shown.
  log("step: :KodeInterrupt")
  local slow_id, slow_buf = file_agent({ { delayMs = 30000, text = "too late" } })
  kode.send("take your time", slow_id)
  wait(10000, function()
    for _, e in ipairs(events) do
      if e.agentId == slow_id and e.event.type == "state_changed" and e.event.state == "WORKING" then
        return true
      end
    end
    return false
  end, "slow turn running")
  vim.api.nvim_set_current_buf(slow_buf)
  vim.cmd("KodeInterrupt")
  wait(10000, function()
    return done_count(slow_id) >= 1
  end, "done after interrupt")
  check(done_reason(slow_id) == "interrupted", "done reason interrupted")
  wait(5000, function()
    return has_line(slow_buf, "[done: interrupted]")
  end, "[done: interrupted] in the chat buffer")

  -- 7b. An approval left open survives a server restart: resume re-issues it.
  log("step: pending approval across a restart")
  local held = {}
  vim.ui.select = function(items, opts, on_choice)
    if opts and opts.kind == "kode_approval" then
      table.insert(held, on_choice) -- never answered
      return
    end
    return real_select(items, opts, on_choice)
  end
  local pend_id, pend_buf = file_agent({
    { toolCalls = { { name = "fs_write", input = { path = "later.txt", content = "LATER\n" } } } },
    { text = "written after restart" },
  })
  kode.send("write later", pend_id)
  wait(10000, function()
    return #held == 1
  end, "approval prompt shown (left open)")
  local stopped0 = false
  kode.stop(function()
    stopped0 = true
  end)
  wait(10000, function()
    return stopped0 and kode.info().state == "stopped"
  end, "server stopped with an approval pending")
  check(read_file(work .. "/later.txt") == nil, "nothing written while pending")
  answer_with("Allow", true)
  prompts = {}
  local req1, dec1 = kode.stats.approval_requests, kode.stats.decides
  local resumed = false
  kode.resume(pend_id, function(err)
    if err then
      error("resume failed: " .. vim.inspect(err))
    end
    resumed = true
  end)
  wait(20000, function()
    return resumed and done_count(pend_id) >= 1
  end, "turn finished after resume + Allow")
  check(#prompts == 1, "re-issued approval prompted once")
  check(read_file(work .. "/later.txt") == "LATER\n", "file written after the restart")
  if has010 then
    check(kode.stats.approval_requests == req1 + 1, "0.10+: re-issued as approval/request")
  else
    check(kode.stats.decides == dec1 + 1, "0.7: re-issued as permission_required, answered with agent/decide")
  end
  wait(5000, function()
    return has_line(pend_buf, "written after restart") and has_line(pend_buf, "> write later")
  end, "history + live reply in the resumed chat:\n" .. buf_text(pend_buf))
  log(buf_text(pend_buf))

  -- 8. Restart the server; :KodeAgents resumes the echo agent and re-renders its history.
  log("step: :KodeStop + :KodeAgents")
  local stopped = false
  kode.stop(function()
    stopped = true
  end)
  wait(10000, function()
    return stopped and kode.info().state == "stopped"
  end, "server stopped")
  vim.api.nvim_buf_set_lines(echo_buf, 0, -1, false, { "garbage" })
  local listed
  vim.ui.select = function(items, opts, on_choice)
    if opts and opts.kind == "kode_agent" then
      listed = items
      for _, it in ipairs(items) do
        if it.agentId == echo_id then
          return on_choice(it)
        end
      end
      return on_choice(nil)
    end
    return real_select(items, opts, on_choice)
  end
  local resumed_before = kode.stats.events
  vim.cmd("KodeAgents")
  wait(20000, function()
    return listed ~= nil and kode.current == echo_id and kode.info().state == "ready"
      and vim.api.nvim_get_current_buf() == echo_buf and has_line(echo_buf, "second line")
  end, "agent resumed and history re-rendered")
  check(#listed == 7, "agent/list (params []) listed the 7 agents")
  check(kode.stats.events > resumed_before, "replayed events received")
  local text = buf_text(echo_buf)
  check(not text:find("garbage", 1, true), "buffer re-rendered from scratch")
  local expected = table.concat({
    "> hello streaming world",
    "hello streaming world",
    "> first line",
    "> second line",
    "first line",
    "second line",
  }, "\n")
  check(text:find(expected, 1, true) ~= nil, "history rendered in order:\n" .. text)
  local _, n = text:gsub("> hello streaming world", "")
  check(n == 1, "history not duplicated")

  -- 9. Live after resume: one more turn on the resumed agent.
  log("step: send after resume")
  local before = done_count(echo_id)
  vim.cmd("KodeSend again")
  wait(20000, function()
    return done_count(echo_id) > before and has_line(echo_buf, "again")
  end, "reply after resume")
  check(has_line(echo_buf, "> again"), "prompt after resume")

  -- 10. A provider failure: the chat shows the error and [done: error]; agent/complete
  -- answers it with a result (status "error", error.type), not a JSON-RPC error.
  log("step: provider failure (no API key)")
  local fail_id
  kode.new_agent({
    model = { provider = "openai", model = "gpt-test", apiKeyEnv = "KODE_NVIM_UNSET_KEY" },
  }, function(err, ag)
    if err then
      error("agent/create failed: " .. vim.inspect(err))
    end
    fail_id = ag.agentId
  end)
  wait(10000, function()
    return fail_id ~= nil and kode._chat.get(fail_id) ~= nil
  end, "agent/create (openai, no key)")
  local fail_buf = kode._chat.get(fail_id).buf
  kode.send("hi", fail_id)
  wait(20000, function()
    return done_count(fail_id) >= 1
  end, "done of the failed turn")
  check(done_reason(fail_id) == "error", "done reason error")
  wait(5000, function()
    return has_line(fail_buf, "[done: error]")
  end, "[done: error] in the chat buffer:\n" .. buf_text(fail_buf))
  local shown = buf_text(fail_buf)
  check(has_line(fail_buf, "[error] authentication: no API key: set the environment variable KODE_NVIM_UNSET_KEY"),
    "the provider's error is shown in the chat:\n" .. shown)
  local cerr, cres
  kode.request("agent/complete", { agentId = fail_id, text = "again" }, function(err, res)
    cerr, cres = err or vim.NIL, res
  end)
  wait(20000, function()
    return cerr ~= nil
  end, "agent/complete of a failing turn")
  local answered = cerr == vim.NIL and type(cres) == "table"
  check(answered, "agent/complete answered with a result, not an error" .. (answered and "" or ": " .. vim.inspect(cerr)))
  local failed = cres.status == "error" and type(cres.error) == "table" and cres.error.type == "authentication"
    and cres.error.retryable == false and type(cres.turnId) == "string"
  check(failed, "result status error, error.type authentication" .. (failed and "" or ": " .. vim.inspect(cres)))
  -- Request errors still come as JSON-RPC errors, with the codes of kode.errors.
  local gerr
  kode.request("agent/complete", { agentId = "no-such-agent", text = "x" }, function(err)
    gerr = err or vim.NIL
  end)
  wait(10000, function()
    return gerr ~= nil
  end, "agent/complete of an unknown agent")
  local nf = errors.is(gerr, "NotFound") and errors.name(gerr.code) == "NotFound"
  check(nf, "unknown agent: JSON-RPC error -32002 (errors.codes.NotFound)" .. (nf and "" or ": " .. vim.inspect(gerr)))

  -- 11. Checkpoints: :KodeDiff shows the turn's diff, :KodeRewind undoes the file write.
  log("step: :KodeDiff + :KodeRewind")
  check(vim.fn.exists(":KodeDiff") == 2 and vim.fn.exists(":KodeRewind") == 2, ":KodeDiff and :KodeRewind defined")
  local cp_id, cp_buf
  kode.new_agent({
    model = { provider = "scripted", script = {
      { toolCalls = { { name = "fs_write", input = { path = "rewind_me.txt", content = "REWIND ME\n" } } } },
      { text = "wrote rewind_me.txt" },
    } },
    permission = { mode = "auto" },
  }, function(err, ag)
    if err then
      error("agent/create failed: " .. vim.inspect(err))
    end
    cp_id = ag.agentId
  end)
  wait(10000, function()
    return cp_id ~= nil and kode._chat.get(cp_id) ~= nil
  end, "agent/create (auto)")
  cp_buf = kode._chat.get(cp_id).buf
  kode.send("write a file", cp_id)
  wait(20000, function()
    return done_count(cp_id) >= 1
  end, "done of the file-writing turn")
  check(read_file(work .. "/rewind_me.txt") == "REWIND ME\n", "the turn wrote rewind_me.txt")
  local turn_diff
  wait(5000, function()
    for _, e in ipairs(events) do
      if e.agentId == cp_id and e.event.type == "turn_diff" then
        turn_diff = e.event
      end
    end
    return turn_diff ~= nil
  end, "turn_diff event")
  local checkpoint = turn_diff.checkpointId
  check(type(checkpoint) == "string" and checkpoint:match("^cp_") ~= nil, "turn_diff names its checkpoint " .. tostring(checkpoint))
  wait(5000, function()
    return buf_text(cp_buf):find("[diff] " .. checkpoint, 1, true) ~= nil
  end, "[diff] line in the chat buffer")

  local function diff_buf_of(cp)
    local name = "kode-diff://" .. cp_id .. "/" .. cp
    for _, b in ipairs(vim.api.nvim_list_bufs()) do
      if vim.api.nvim_buf_is_valid(b) and vim.api.nvim_buf_get_name(b) == name then
        return b
      end
    end
  end
  vim.api.nvim_set_current_buf(cp_buf)
  vim.cmd("KodeDiff")
  wait(5000, function()
    local b = diff_buf_of(checkpoint)
    return b ~= nil and vim.api.nvim_get_current_buf() == b
  end, ":KodeDiff opened a diff buffer")
  local dbuf = diff_buf_of(checkpoint)
  local dtext = buf_text(dbuf)
  check(vim.api.nvim_buf_get_option(dbuf, "filetype") == "diff", "diff buffer has filetype diff")
  check(vim.api.nvim_buf_get_option(dbuf, "buftype") == "nofile", "diff buffer is a scratch buffer")
  check(dtext:find("rewind_me.txt", 1, true) ~= nil and has_line(dbuf, "+REWIND ME"),
    ":KodeDiff shows the turn's diff:\n" .. dtext)
  log(dtext)
  vim.cmd("close")

  -- By checkpoint id, read back from agent/events (nothing in memory).
  kode._state(cp_id).diffs = {}
  kode._state(cp_id).last_diff = nil
  vim.api.nvim_set_current_buf(cp_buf)
  local got_ev
  kode.diff(checkpoint, nil, function(err, _, ev)
    got_ev = err or ev
  end)
  wait(10000, function()
    return got_ev ~= nil
  end, "kode.diff(" .. checkpoint .. ") from agent/events")
  check(got_ev.checkpointId == checkpoint and type(got_ev.diff) == "string"
    and got_ev.diff:find("+REWIND ME", 1, true) ~= nil, "diff of " .. checkpoint .. " read from agent/events: "
    .. vim.inspect(got_ev))
  check(has_line(diff_buf_of(checkpoint), "+REWIND ME"), ":KodeDiff " .. checkpoint .. " buffer shows the diff")
  vim.cmd("close")
  local nocp
  kode.diff("cp_999", cp_id, function(err)
    nocp = err or false
  end)
  wait(10000, function()
    return nocp ~= nil
  end, "diff of an unknown checkpoint")
  check(nocp and tostring(nocp.message):find("cp_999", 1, true) ~= nil, "unknown checkpoint: error names it")

  -- :KodeRewind: first cancelled (nothing changes), then confirmed (the file goes).
  local rewind_prompts = {}
  local rewind_answer = "Cancel"
  vim.ui.select = function(items, opts, on_choice)
    if opts and opts.kind == "kode_rewind" then
      table.insert(rewind_prompts, { prompt = opts.prompt, items = items })
      local pick
      for _, it in ipairs(items) do
        if it:find(rewind_answer, 1, true) == 1 then
          pick = it
        end
      end
      vim.defer_fn(function()
        on_choice(pick)
      end, 20)
      return
    end
    return real_select(items, opts, on_choice)
  end
  local function rewound_count()
    local n = 0
    for _, e in ipairs(events) do
      if e.agentId == cp_id and e.event.type == "rewound" then
        n = n + 1
      end
    end
    return n
  end
  vim.api.nvim_set_current_buf(cp_buf)
  vim.cmd("KodeRewind " .. checkpoint .. " code")
  wait(10000, function()
    return #rewind_prompts == 1
  end, ":KodeRewind asked")
  vim.wait(500)
  check(rewind_prompts[1].prompt:find("remove rewind_me.txt", 1, true) ~= nil and rewind_prompts[1].items[1] == "Rewind",
    "dry run shown in the prompt: " .. rewind_prompts[1].prompt)
  check(read_file(work .. "/rewind_me.txt") == "REWIND ME\n" and rewound_count() == 0, "Cancel: nothing rewound")

  -- A change from outside since the turn: the prompt lists it and offers to force.
  write_file(work .. "/rewind_me.txt", "EDITED OUTSIDE\n")
  rewind_answer = "Force"
  vim.cmd("KodeRewind " .. checkpoint)
  wait(10000, function()
    return #rewind_prompts == 2
  end, ":KodeRewind asked again")
  check(rewind_prompts[2].prompt:find("CHANGED OUTSIDE THE AGENT", 1, true) ~= nil
    and rewind_prompts[2].prompt:find("rewind_me.txt", 1, true) ~= nil
    and rewind_prompts[2].items[1]:find("Force", 1, true) == 1, "conflict shown, force offered: "
    .. rewind_prompts[2].prompt)
  wait(10000, function()
    return rewound_count() >= 1 and read_file(work .. "/rewind_me.txt") == nil
  end, "forced rewind removed rewind_me.txt")
  check(read_file(work .. "/rewind_me.txt") == nil, ":KodeRewind removed the file the turn wrote")
  wait(5000, function()
    return buf_text(cp_buf):find("[rewound both to " .. checkpoint .. "]", 1, true) ~= nil
  end, "[rewound] line in the chat buffer:\n" .. buf_text(cp_buf))

  vim.ui.select = real_select
  local stopped2 = false
  kode.stop(function()
    stopped2 = true
  end)
  wait(10000, function()
    return stopped2
  end, "final stop")
end

local ok, err = xpcall(main, debug.traceback)
if ok then
  log(string.format("PASS: %d checks", checks))
  if out then
    out:close()
  end
  vim.cmd("qa!")
else
  log("FAIL: " .. tostring(err))
  if out then
    out:close()
  end
  vim.cmd("cquit 1")
end
