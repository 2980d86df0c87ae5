-- kode.nvim: a chat client for the kode-rpc agent server.
--
--   require("kode").setup{
--     cmd = nil,                -- server command; see lua/kode/discovery.lua for the order
--     model = nil,              -- ModelConfig for new agents, e.g. {provider="anthropic", model="..."}
--     permission = nil,         -- PermissionConfig, e.g. {mode="approval"}
--     work_dir = nil,           -- sandbox.workDir of new agents (default: cwd at creation)
--     data_dir = nil,           -- server data dir (passed as KODE_DATA_DIR)
--     template = nil,           -- templateId of new agents (server default: "default")
--     log_level = "WARNING",    -- --log-level of a discovered server command
--     split = "botright vsplit",-- how :KodeChat opens its window
--     on_event = nil,           -- function(envelope) called for every agent/event
--   }
--
-- All RPC is asynchronous (callbacks); every buffer edit is scheduled with
-- vim.schedule, in the order the messages arrived.
local rpc = require("kode.rpc")
local chat = require("kode.chat")
local approval = require("kode.approval")
local errors = require("kode.errors")

local M = {}

local defaults = {
  cmd = nil,
  model = nil,
  permission = nil,
  work_dir = nil,
  data_dir = nil,
  template = nil,
  log_level = "WARNING",
  split = "botright vsplit",
  on_event = nil,
}

M.config = vim.deepcopy(defaults)

--- Per-agent client state: last seq seen, pending user texts by turn, turns in flight.
local agents = {}
--- Tools the user chose "Always allow" for on 0.7-0.9 (agentId -> {tool=true}).
local always = {}
--- Approval ids already prompted (0.7-0.9 path), so re-emits do not prompt twice.
local prompted = {}

--- Counters, for tests and :KodeInfo.
M.stats = { approval_requests = 0, decides = 0, events = 0, text_chunks = 0 }

M.current = nil -- current agent id

local function notify(msg, level)
  vim.schedule(function()
    vim.notify("kode: " .. msg, level or vim.log.levels.INFO)
  end)
end

local function ui(fn)
  vim.schedule(function()
    local ok, err = pcall(fn)
    if not ok then
      vim.notify("kode: " .. tostring(err), vim.log.levels.ERROR)
    end
  end)
end

local function agent_state(id)
  local st = agents[id]
  if not st then
    st = { last_seq = 0, pending_user = {}, inflight = 0, diffs = {}, last_diff = nil }
    agents[id] = st
  end
  return st
end

local function is_nil(v)
  return v == nil or v == vim.NIL
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts or {})
  if opts and opts.cmd then
    M.config.cmd = opts.cmd -- lists are replaced, not merged
  end
  return M
end

-- ---------------------------------------------------------------------------
-- Rendering of events

local function render_user(c, text)
  if not c then
    return
  end
  local lines = vim.split(text, "\n", { plain = true })
  for i, l in ipairs(lines) do
    lines[i] = "> " .. l
  end
  chat.line(c, table.concat(lines, "\n"))
end

local function render_event(env)
  local c = chat.get(env.agentId)
  if not c then
    return
  end
  local st = agent_state(env.agentId)
  local ev = env.event
  local t = ev.type
  if not is_nil(env.turnId) and st.pending_user[env.turnId] then
    render_user(c, st.pending_user[env.turnId])
    st.pending_user[env.turnId] = nil
  end
  if t == "text_chunk_start" then
    chat.fresh_line(c)
  elseif t == "text_chunk" then
    chat.stream(c, ev.delta or "")
  elseif t == "text_chunk_end" then
    chat.fresh_line(c)
  elseif t == "tool:start" then
    chat.tool_start(c, ev.call or {})
  elseif t == "tool:end" then
    chat.tool_end(c, ev.call or {})
  elseif t == "tool:error" then
    chat.line(c, "  tool error: " .. tostring(ev.error))
  elseif t == "permission_required" then
    local call = ev.call or {}
    chat.line(c, string.format("[approval] %s: waiting for a decision", tostring(call.name)))
  elseif t == "permission_decided" then
    chat.line(c, string.format("[approval] %s (by %s)", tostring(ev.decision), tostring(ev.decidedBy)))
  elseif t == "done" then
    if ev.reason ~= "completed" then
      chat.line(c, "[done: " .. tostring(ev.reason) .. "]")
    end
    chat.fresh_line(c)
  elseif t == "error" then
    if ev.severity == "error" then
      chat.line(c, "[error] " .. tostring(ev.message))
    end
  elseif t == "turn_diff" and not env.replay then
    local files = type(ev.files) == "table" and #ev.files or 0
    chat.line(c, string.format("[diff] %s: %d file(s) changed (:KodeDiff %s)", tostring(ev.checkpointId), files,
      tostring(ev.checkpointId)))
  elseif t == "rewound" and not env.replay then
    chat.line(c, string.format("[rewound %s to %s]", tostring(ev.restore), tostring(ev.checkpointId)))
  elseif t == "agent_resumed" and not env.replay then
    local sealed = ev.sealed
    if type(sealed) == "table" and #sealed > 0 then
      chat.line(c, "[resumed: sealed " .. #sealed .. " unfinished tool call(s)]")
    end
  end
end

-- ---------------------------------------------------------------------------
-- Approvals

local function decide(agent_id, approval_id, decision, note)
  M.stats.decides = M.stats.decides + 1
  rpc.request(M.config, "agent/decide", {
    agentId = agent_id,
    approvalId = approval_id,
    decision = decision,
    note = note,
  }, function(err)
    if err and not errors.is(err, "ApprovalNotPending") then
      notify("agent/decide failed: " .. rpc.format_error(err), vim.log.levels.ERROR)
    end
  end)
end

-- 0.7-0.9: a `permission_required` event is the prompt.
local function on_permission_required(env)
  local ev = env.event
  local id = ev.approvalId
  if rpc.has_010 or env.replay or is_nil(id) or prompted[id] then
    return
  end
  prompted[id] = true
  local call = ev.call or {}
  local tools = always[env.agentId]
  if tools and call.name and tools[call.name] then
    decide(env.agentId, id, "allow", "always allowed in this session")
    return
  end
  -- Scheduled, so the chat shows the request before the prompt opens.
  vim.schedule(function()
    local req = { agentId = env.agentId, approvalId = id, call = call, title = "Run " .. tostring(call.name) .. "?" }
    approval.ask(req, function(decision, remember)
      if decision == nil then
        return -- cancelled: decided elsewhere (timeout, interrupt, another client)
      end
      if decision == "allow" and remember and call.name then
        always[env.agentId] = always[env.agentId] or {}
        always[env.agentId][call.name] = true
      end
      decide(env.agentId, id, decision)
    end)
  end)
end

-- 0.10+: `approval/request` runs in vim.lsp.rpc's coroutine.
local function on_server_request(method, params)
  if method == "approval/request" then
    M.stats.approval_requests = M.stats.approval_requests + 1
    if type(params) ~= "table" then
      return { decision = "deny", note = "malformed request" }
    end
    return approval.ask_blocking(params)
  end
  return nil, vim.lsp.rpc.rpc_response_error(-32601)
end

local function on_notification(method, params)
  if method ~= "agent/event" or type(params) ~= "table" or type(params.event) ~= "table" then
    return
  end
  local env = params
  local st = agent_state(env.agentId)
  if type(env.seq) == "number" then
    if env.seq <= st.last_seq then
      return -- already seen (a resume replays from our cursor)
    end
    st.last_seq = env.seq
  end
  M.stats.events = M.stats.events + 1
  if env.event.type == "text_chunk" then
    M.stats.text_chunks = M.stats.text_chunks + 1
  elseif env.event.type == "done" then
    st.inflight = math.max(0, st.inflight - 1)
  elseif env.event.type == "permission_required" then
    on_permission_required(env)
  elseif env.event.type == "turn_diff" and not is_nil(env.event.checkpointId) then
    st.diffs[env.event.checkpointId] = env.event
    st.last_diff = env.event -- a replay comes in seq order too: the last one wins
  elseif env.event.type == "permission_decided" then
    local ev = env.event
    if ev.decidedBy ~= "client" and not is_nil(ev.approvalId) then
      approval.cancel(ev.approvalId) -- decided elsewhere: drop a prompt still queued
    end
  end
  if M.config.on_event then
    pcall(M.config.on_event, env)
  end
  ui(function()
    render_event(env)
  end)
end

local function on_exit(code, _, was, stopping)
  -- Pending approvals live on in the server's store and are re-issued by
  -- agent/resume; forget what this connection prompted for.
  prompted = {}
  approval.reset()
  if not stopping then
    notify("kode-rpc exited (code " .. tostring(code) .. ")" .. (was == "starting" and " while starting" or ""),
      vim.log.levels.WARN)
  end
end

rpc.set_handlers({ notification = on_notification, server_request = on_server_request, on_exit = on_exit })

-- ---------------------------------------------------------------------------
-- Public API

function M.request(method, params, cb)
  rpc.request(M.config, method, params, cb)
end

local function report(what)
  return function(err)
    if err then
      notify(what .. ": " .. rpc.format_error(err), vim.log.levels.ERROR)
    end
  end
end

--- Create a new agent and make it current. overrides: AgentConfig fields.
--- cb(err, info)
function M.new_agent(overrides, cb)
  cb = cb or report("agent/create")
  local cfg = M.config
  local params = {
    model = cfg.model,
    permission = cfg.permission,
    templateId = cfg.template,
    sandbox = { workDir = cfg.work_dir or vim.fn.getcwd() },
  }
  for k, v in pairs(overrides or {}) do
    params[k] = v
  end
  -- Neovim encodes an empty Lua table as `[]`; the server wants objects for
  -- these fields, so an empty one is left out (metadata: sent as `{}`).
  for _, k in ipairs({ "model", "permission", "sandbox", "budget" }) do
    if type(params[k]) == "table" and vim.tbl_isempty(params[k]) then
      params[k] = nil
    end
  end
  if type(params.metadata) == "table" and vim.tbl_isempty(params.metadata) then
    params.metadata = vim.empty_dict()
  end
  M.request("agent/create", params, function(err, info)
    if err then
      return cb(err)
    end
    M.current = info.agentId
    vim.g.kode_agent_id = info.agentId
    agent_state(info.agentId)
    ui(function()
      chat.ensure(info.agentId, info)
    end)
    cb(nil, info)
  end)
end

--- Run cb(err, agentId) with the current agent, creating one on first use.
function M.with_agent(cb)
  if M.current then
    return cb(nil, M.current)
  end
  if M._creating then
    table.insert(M._creating, cb)
    return
  end
  M._creating = { cb }
  M.new_agent(nil, function(err, info)
    local waiters = M._creating
    M._creating = nil
    for _, w in ipairs(waiters) do
      w(err, info and info.agentId)
    end
  end)
end

--- :KodeChat
function M.open_chat(cb)
  cb = cb or function() end
  M.with_agent(function(err, id)
    if err then
      notify("cannot create an agent: " .. rpc.format_error(err), vim.log.levels.ERROR)
      return cb(err)
    end
    ui(function()
      local c = chat.ensure(id)
      chat.show(c, M.config.split)
      cb(nil, id, c.buf)
    end)
  end)
end

--- Send text to an agent (default: the current one). cb(err, SendResult)
function M.send(text, agent_id, cb)
  cb = cb or report("agent/send")
  if type(text) ~= "string" or vim.trim(text) == "" then
    return cb({ message = "nothing to send" })
  end
  local function go(id)
    local st = agent_state(id)
    local render_now = st.inflight == 0
    st.inflight = st.inflight + 1
    if render_now then
      ui(function()
        render_user(chat.get(id), text)
      end)
    end
    M.request("agent/send", { agentId = id, text = text }, function(err, res)
      if err then
        st.inflight = math.max(0, st.inflight - 1)
        ui(function()
          local c = chat.get(id)
          if c then
            chat.line(c, "[error] " .. rpc.format_error(err))
          end
        end)
        return cb(err)
      end
      if not render_now and res and res.turnId then
        st.pending_user[res.turnId] = text
      end
      cb(nil, res)
    end)
  end
  if agent_id then
    return go(agent_id)
  end
  M.with_agent(function(err, id)
    if err then
      return cb(err)
    end
    ui(function()
      chat.reveal(chat.ensure(id), M.config.split)
      go(id)
    end)
  end)
end

--- :KodeSend without text in a chat buffer: the draft, else the cursor line.
function M.send_from_buffer(buf)
  buf = buf or vim.api.nvim_get_current_buf()
  local id = chat.agent_of_buf(buf)
  local c = id and chat.get(id)
  if not c then
    notify("not a kode chat buffer; use :KodeSend {text}", vim.log.levels.WARN)
    return
  end
  local cursor_row
  if vim.api.nvim_get_current_buf() == buf then
    cursor_row = vim.api.nvim_win_get_cursor(0)[1]
  end
  local text = chat.take_draft(c, cursor_row)
  if not text then
    notify("nothing to send: type below the transcript", vim.log.levels.WARN)
    return
  end
  M.current = id
  M.send(text, id)
end

--- :KodeInterrupt (the chat buffer's agent, else the current one).
function M.interrupt(agent_id, cb)
  agent_id = agent_id or chat.agent_of_buf(vim.api.nvim_get_current_buf()) or M.current
  cb = cb or report("agent/interrupt")
  if not agent_id then
    return cb({ message = "no agent" })
  end
  M.request("agent/interrupt", { agentId = agent_id }, cb)
end

--- :KodeCompact [instructions]: summarise the older part of the agent's context now
--- (after its running turn, if any). cb(err, CompactResult)
function M.compact(instructions, agent_id, cb)
  agent_id = agent_id or chat.agent_of_buf(vim.api.nvim_get_current_buf()) or M.current
  cb = cb
    or function(err, res)
      if err then
        return notify("agent/compact: " .. rpc.format_error(err), vim.log.levels.ERROR)
      end
      if res.compressed then
        notify(string.format("compacted %d messages (prompt now ~%d%% of before)", res.compactedMessages,
          math.floor((res.ratio or 1) * 100 + 0.5)))
      else
        notify("nothing to compact yet")
      end
    end
  if not agent_id then
    return cb({ message = "no agent" })
  end
  local params = { agentId = agent_id }
  if instructions and instructions ~= "" then
    params.instructions = instructions
  end
  M.request("agent/compact", params, cb)
end

--- Resume an agent: replay its whole history into its chat buffer and make it
--- current. cb(err, ResumeResult)
function M.resume(agent_id, cb)
  cb = cb or report("agent/resume")
  -- User messages are not events: read them first, keyed by turn, so the
  -- replay can print each prompt before its turn's output.
  M.request("agent/messages", { agentId = agent_id }, function(merr, mres)
    if merr then
      return cb(merr)
    end
    ui(function()
      local st = agent_state(agent_id)
      st.last_seq = 0
      st.inflight = 0
      st.pending_user = {}
      local first = {}
      for _, msg in ipairs((mres or {}).messages or {}) do
        if msg.role == "user" then
          local parts = {}
          for _, block in ipairs(msg.content or {}) do
            if type(block) == "table" and block.type == "text" and type(block.text) == "string" then
              parts[#parts + 1] = block.text
            end
          end
          if #parts > 0 then
            local text = table.concat(parts, "\n")
            if is_nil(msg.turnId) then
              first[#first + 1] = text
            else
              local prev = st.pending_user[msg.turnId]
              st.pending_user[msg.turnId] = prev and (prev .. "\n" .. text) or text
            end
          end
        end
      end
      local c, created = chat.ensure(agent_id)
      if not created then
        chat.reset(c)
      end
      for _, text in ipairs(first) do
        render_user(c, text)
      end
      M.request("agent/resume", { agentId = agent_id, since = 0 }, function(err, res)
        if err then
          return cb(err)
        end
        M.current = agent_id
        vim.g.kode_agent_id = agent_id
        ui(function()
          local cc = chat.ensure(agent_id, res)
          if res.state == "WORKING" or res.state == "PAUSED" then
            agent_state(agent_id).inflight = 1
          end
          cb(nil, res, cc.buf)
        end)
      end)
    end)
  end)
end

local function fmt_agent(a)
  local model = ""
  if type(a.model) == "table" then
    model = tostring(a.model.provider or "")
    if not is_nil(a.model.model) then
      model = model .. "/" .. tostring(a.model.model)
    end
  end
  return string.format("%s  [%s]  %s  %d msgs  %s", a.agentId, model, tostring(a.state),
    tonumber(a.messageCount) or 0, tostring(a.updatedAt or ""))
end

--- All agents (follows nextCursor, up to 10 pages). cb(err, agents)
function M.list_agents(cb)
  local all = {}
  local function page(cursor, n)
    local params = {}
    if cursor then
      params.cursor = cursor
    end
    -- An empty table goes out as `"params": []` (Neovim's encoding); the
    -- server reads that as {}.
    M.request("agent/list", params, function(err, res)
      if err then
        return cb(err)
      end
      for _, a in ipairs(res.agents or {}) do
        all[#all + 1] = a
      end
      if not is_nil(res.nextCursor) and res.nextCursor and n < 10 then
        return page(res.nextCursor, n + 1)
      end
      cb(nil, all)
    end)
  end
  page(nil, 1)
end

--- :KodeAgents: pick an agent, resume it with its full history, open its chat.
function M.pick_agent(cb)
  cb = cb or function() end
  M.list_agents(function(err, list)
    if err then
      notify("agent/list: " .. rpc.format_error(err), vim.log.levels.ERROR)
      return cb(err)
    end
    if #list == 0 then
      notify("no agents yet; :KodeChat creates one")
      return cb(nil)
    end
    table.sort(list, function(a, b)
      return tostring(a.updatedAt or "") > tostring(b.updatedAt or "")
    end)
    vim.schedule(function()
      vim.ui.select(list, { prompt = "kode agents", format_item = fmt_agent, kind = "kode_agent" }, function(item)
        if not item then
          return cb(nil)
        end
        M.resume(item.agentId, function(rerr, res, buf)
          if rerr then
            notify("agent/resume: " .. rpc.format_error(rerr), vim.log.levels.ERROR)
            return cb(rerr)
          end
          ui(function()
            local c = chat.get(item.agentId)
            if c then
              chat.show(c, M.config.split)
            end
            cb(nil, res, buf)
          end)
        end)
      end)
    end)
  end)
end

--- :KodeNew: a fresh agent with the configured model, opened in its chat.
function M.new_chat(cb)
  cb = cb or function() end
  M.new_agent(nil, function(err, info)
    if err then
      notify("agent/create: " .. rpc.format_error(err), vim.log.levels.ERROR)
      return cb(err)
    end
    ui(function()
      chat.show(chat.ensure(info.agentId, info), M.config.split)
      cb(nil, info)
    end)
  end)
end

-- ---------------------------------------------------------------------------
-- Checkpoints: :KodeDiff and :KodeRewind

--- The agent a command applies to: the chat (or diff) buffer's, else the current one.
local function target_agent(agent_id)
  if agent_id then
    return agent_id
  end
  local buf = vim.api.nvim_get_current_buf()
  local id = chat.agent_of_buf(buf)
  if id then
    return id
  end
  local ok, v = pcall(vim.api.nvim_buf_get_var, buf, "kode_agent_id")
  if ok and type(v) == "string" then
    return v
  end
  return M.current
end

--- cb(err, checkpoint) for `cp_id`, or the newest checkpoint when cp_id is nil.
local function find_checkpoint(agent_id, cp_id, cb)
  M.request("agent/checkpoints", { agentId = agent_id }, function(err, res)
    if err then
      return cb(err)
    end
    local list = (res or {}).checkpoints or {}
    if not cp_id then
      if #list == 0 then
        return cb({ message = "no checkpoints yet (a turn that changes files takes one)" })
      end
      return cb(nil, list[#list])
    end
    for _, cp in ipairs(list) do
      if cp.checkpointId == cp_id then
        return cb(nil, cp)
      end
    end
    cb({ message = "no checkpoint " .. cp_id })
  end)
end

--- The `turn_diff` event of a checkpoint, from the agent's event log. cb(err, event|nil)
local function diff_from_log(agent_id, cp, cb)
  local function page(since, n)
    M.request("agent/events", { agentId = agent_id, since = since, channels = { "monitor" } }, function(err, res)
      if err then
        return cb(err)
      end
      local events = (res or {}).events or {}
      local last = since
      for _, env in ipairs(events) do
        local ev = env.event or {}
        if ev.type == "turn_diff" and ev.checkpointId == cp.checkpointId then
          agent_state(agent_id).diffs[cp.checkpointId] = ev
          return cb(nil, ev)
        end
        if ev.type == "checkpoint" and ev.checkpointId ~= cp.checkpointId then
          return cb(nil, nil) -- the next turn began: that one changed no files (or is running)
        end
        if type(env.seq) == "number" and env.seq > last then
          last = env.seq
        end
      end
      if #events == 0 or last <= since or n >= 50 then
        return cb(nil, nil)
      end
      page(last, n + 1)
    end)
  end
  page(math.max(0, (tonumber(cp.seq) or 1) - 1), 1)
end

local function diff_lines(ev)
  local text = type(ev.diff) == "string" and ev.diff or ""
  local lines = vim.split(text, "\n", { plain = true })
  if lines[#lines] == "" then
    lines[#lines] = nil
  end
  if ev.truncated == true then
    lines[#lines + 1] = "# (diff truncated at 1 MiB)"
  end
  if #lines == 0 then
    lines = { "# no changes" }
  end
  return lines
end

--- Show a turn_diff event in a scratch buffer (filetype diff). Returns the buffer.
local function show_diff(agent_id, ev)
  local name = "kode-diff://" .. agent_id .. "/" .. tostring(ev.checkpointId)
  local buf
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_valid(b) and vim.api.nvim_buf_get_name(b) == name then
      buf = b
    end
  end
  if not buf then
    buf = vim.api.nvim_create_buf(false, true)
    vim.api.nvim_buf_set_name(buf, name)
  end
  vim.api.nvim_buf_set_option(buf, "buftype", "nofile")
  vim.api.nvim_buf_set_option(buf, "bufhidden", "wipe")
  vim.api.nvim_buf_set_option(buf, "swapfile", false)
  vim.api.nvim_buf_set_option(buf, "modifiable", true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, diff_lines(ev))
  vim.api.nvim_buf_set_option(buf, "modifiable", false)
  vim.api.nvim_buf_set_var(buf, "kode_agent_id", agent_id)
  vim.api.nvim_buf_set_var(buf, "kode_checkpoint_id", tostring(ev.checkpointId))
  local win = vim.fn.bufwinid(buf)
  if win ~= -1 then
    vim.api.nvim_set_current_win(win)
  else
    vim.cmd("botright split")
    vim.api.nvim_win_set_buf(0, buf)
  end
  vim.api.nvim_buf_set_option(buf, "filetype", "diff")
  return buf
end

--- :KodeDiff [cp_N]: the last turn's diff (or that checkpoint's) in a scratch buffer.
--- cb(err, buf, turn_diff_event)
function M.diff(cp_id, agent_id, cb)
  cb = cb or report("diff")
  if cp_id == "" then
    cp_id = nil
  end
  agent_id = target_agent(agent_id)
  if not agent_id then
    return cb({ message = "no agent" })
  end
  local st = agent_state(agent_id)
  local function open(ev)
    ui(function()
      cb(nil, show_diff(agent_id, ev), ev)
    end)
  end
  local mem = cp_id and st.diffs[cp_id] or (not cp_id and st.last_diff)
  if mem then
    return open(mem)
  end
  find_checkpoint(agent_id, cp_id, function(err, cp)
    if err then
      return cb(err)
    end
    diff_from_log(agent_id, cp, function(lerr, ev)
      if lerr then
        return cb(lerr)
      end
      if not ev then
        return cb({ message = cp.checkpointId .. ": the turn changed no files" })
      end
      open(ev)
    end)
  end)
end

local function rewind_summary(cp, restore, res, verb)
  local files = {}
  local names = { added = "restore", modified = "restore", deleted = "remove" }
  for _, f in ipairs(res.files or {}) do
    files[#files + 1] = (names[f.change] or tostring(f.change)) .. " " .. tostring(f.path)
  end
  local s = string.format("kode: %s %s to %s (before message %s)", verb, restore, cp.checkpointId,
    tostring(cp.messageIndex))
  if #files > 0 then
    s = s .. ": " .. table.concat(files, ", ")
  elseif restore ~= "conversation" then
    s = s .. ": no file changes"
  end
  if type(res.conflicts) == "table" and #res.conflicts > 0 then
    s = s .. "; CHANGED OUTSIDE THE AGENT (would be lost): " .. table.concat(res.conflicts, ", ")
  end
  if #s > 300 then
    s = s:sub(1, 297) .. "..."
  end
  return s
end

M.rewind_choices = { "Rewind", "Cancel" }
M.rewind_force_choices = { "Force rewind (discard the outside changes)", "Cancel" }

--- :KodeRewind [cp_N] [code|conversation|both]: dry run, confirm (force when files were
--- changed outside the agent), rewind. cb(err, RewindResult|nil) (nil: cancelled)
function M.rewind(cp_id, restore, agent_id, cb)
  cb = cb
    or function(err, res)
      if err then
        return notify("rewind: " .. rpc.format_error(err), vim.log.levels.ERROR)
      end
      if res and res.restored then
        notify(string.format("rewound (%d file(s))", #(res.files or {})))
      end
    end
  if cp_id == "" then
    cp_id = nil
  end
  restore = restore or "both"
  agent_id = target_agent(agent_id)
  if not agent_id then
    return cb({ message = "no agent" })
  end
  find_checkpoint(agent_id, cp_id, function(err, cp)
    if err then
      return cb(err)
    end
    local params = { agentId = agent_id, checkpointId = cp.checkpointId, restore = restore, dryRun = true }
    M.request("agent/rewind", params, function(derr, dry)
      if derr then
        return cb(derr)
      end
      local conflicts = type(dry.conflicts) == "table" and #dry.conflicts > 0
      vim.schedule(function()
        local items = conflicts and M.rewind_force_choices or M.rewind_choices
        local prompt = rewind_summary(cp, restore, dry, "rewind")
        vim.ui.select(items, { prompt = prompt, kind = "kode_rewind" }, function(choice)
          if choice ~= items[1] then
            return cb(nil, nil)
          end
          M.request("agent/rewind", { agentId = agent_id, checkpointId = cp.checkpointId, restore = restore,
            force = conflicts or nil }, function(rerr, res)
            if rerr then
              return cb(rerr)
            end
            ui(function()
              if not res.restored and type(res.conflicts) == "table" and #res.conflicts > 0 then
                notify("not rewound: changed outside the agent meanwhile: " .. table.concat(res.conflicts, ", "),
                  vim.log.levels.WARN)
              end
              if res.restored and restore ~= "conversation" then
                pcall(vim.cmd, "checktime") -- reload buffers of rewound files
              end
              cb(nil, res)
            end)
          end)
        end)
      end)
    end)
  end)
end

--- :KodeStop
function M.stop(cb)
  rpc.stop(cb)
end

function M.info()
  local conn = rpc.conn
  return {
    state = conn.state,
    cmd = conn.cmd,
    server = conn.info,
    agent = M.current,
    approvals = rpc.has_010 and "approval/request" or "permission_required + agent/decide",
    stats = M.stats,
  }
end

M._chat = chat
M._rpc = rpc
M._state = agent_state

return M
