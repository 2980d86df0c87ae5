-- The connection to one kode-rpc server, through vim.lsp.rpc (LSP framing).
--
-- vim.lsp.rpc.start changed signature in 0.10:
--   0.7 - 0.9 : start(cmd, cmd_args, dispatchers, extra_spawn_params)
--   0.10+     : start({cmd, args...}, dispatchers, extra_spawn_params)
-- Both run response callbacks and notifications through vim.schedule. Server
-- requests run synchronously on 0.7-0.9 and inside a coroutine on 0.10+, which
-- is why approvals are only negotiated (capabilities.approvals) on 0.10+.
local discovery = require("kode.discovery")

local M = {}

M.has_010 = vim.fn.has("nvim-0.10") == 1

--- A connection: { rpc, state = "stopped"|"starting"|"ready", waiters, info }
local conn = { state = "stopped", waiters = {} }
M.conn = conn

local handlers = {
  notification = function(_, _) end,
  server_request = nil,
  on_exit = function(_, _) end,
}

--- Set by init.lua: handlers.notification(method, params),
--- handlers.server_request(method, params) -> result | nil, err,
--- handlers.on_exit(code, signal).
function M.set_handlers(h)
  for k, v in pairs(h) do
    handlers[k] = v
  end
end

--- A client-side error (no JSON-RPC code: it never came from the server).
local function err_table(message, reason)
  return { message = message, data = { reason = reason or "client" } }
end

function M.format_error(err)
  if type(err) ~= "table" then
    return tostring(err)
  end
  local s = tostring(err.message or "error")
  if err.code then
    s = s .. " (" .. tostring(err.code) .. ")"
  end
  if type(err.data) == "table" and type(err.data.errors) == "table" then
    local parts = {}
    for _, e in ipairs(err.data.errors) do
      if type(e) == "table" then
        parts[#parts + 1] = tostring(e.field) .. ": " .. tostring(e.message)
      end
    end
    if #parts > 0 then
      s = s .. ": " .. table.concat(parts, "; ")
    end
  end
  return s
end

local function flush(err)
  local waiters = conn.waiters
  conn.waiters = {}
  for _, w in ipairs(waiters) do
    local ok, e = pcall(w, err)
    if not ok then
      vim.schedule(function()
        vim.notify("kode: " .. tostring(e), vim.log.levels.ERROR)
      end)
    end
  end
end

local function spawn(cfg, dispatchers)
  local cmd = discovery.resolve(cfg)
  local extra = {}
  local cwd = cfg.work_dir
  if cwd and vim.fn.isdirectory(cwd) == 1 then
    extra.cwd = cwd
  end
  if cfg.data_dir then
    extra.env = { KODE_DATA_DIR = cfg.data_dir }
  end
  local ok, client
  if M.has_010 then
    ok, client = pcall(vim.lsp.rpc.start, cmd, dispatchers, extra)
  else
    local args = {}
    for i = 2, #cmd do
      args[#args + 1] = cmd[i]
    end
    ok, client = pcall(vim.lsp.rpc.start, cmd[1], args, dispatchers, extra)
  end
  if not ok then
    return nil, cmd, tostring(client)
  end
  if not client then
    return nil, cmd, "could not spawn " .. table.concat(cmd, " ")
  end
  return client, cmd
end

--- Start the server (once) and run cb(err) when it is initialized.
function M.ensure(cfg, cb)
  if conn.state == "ready" then
    return cb(nil)
  end
  table.insert(conn.waiters, cb)
  if conn.state == "starting" then
    return
  end
  conn.state = "starting"
  local generation = (conn.generation or 0) + 1
  conn.generation = generation
  local dispatchers = {
    notification = function(method, params)
      if conn.generation == generation then
        handlers.notification(method, params)
      end
    end,
    server_request = function(method, params)
      if handlers.server_request then
        return handlers.server_request(method, params)
      end
      return nil, vim.lsp.rpc.rpc_response_error(-32601)
    end,
    on_exit = function(code, signal)
      -- Called from a libuv callback (not scheduled on any version).
      vim.schedule(function()
        if conn.generation ~= generation then
          return
        end
        local was = conn.state
        conn.state = "stopped"
        conn.rpc = nil
        conn.info = nil
        if was == "starting" then
          flush(err_table("kode-rpc exited during start (code " .. tostring(code) .. ")"))
        end
        local stopping = conn.stopping
        conn.stopping = false
        handlers.on_exit(code, signal, was, stopping)
        local stop_cb = conn.stop_cb
        conn.stop_cb = nil
        if stop_cb then
          stop_cb()
        end
      end)
    end,
  }
  local client, cmd, spawn_err = spawn(cfg, dispatchers)
  conn.cmd = cmd
  if not client then
    conn.state = "stopped"
    flush(err_table("cannot start the server: " .. tostring(spawn_err):gsub("^[^\n]-%.lua:%d+: ", ""), "spawn_failed"))
    return
  end
  conn.rpc = client
  local folders = { cfg.work_dir or vim.fn.getcwd() }
  local params = {
    protocolVersion = 1,
    clientInfo = { name = "kode.nvim", version = "0.1.0" },
    processId = vim.fn.getpid(),
    workspaceFolders = folders,
    capabilities = { approvals = M.has_010 },
  }
  client.request("initialize", params, function(err, result)
    if conn.generation ~= generation then
      return
    end
    if err then
      conn.state = "stopped"
      pcall(client.notify, "exit", vim.empty_dict())
      flush(err)
      return
    end
    conn.info = result
    conn.state = "ready"
    client.notify("initialized", vim.empty_dict())
    flush(nil)
  end)
end

--- Send a request once the server is up; cb(err, result) runs on the main loop.
function M.request(cfg, method, params, cb)
  cb = cb or function() end
  M.ensure(cfg, function(err)
    if err then
      return cb(err, nil)
    end
    local ok, sent = pcall(conn.rpc.request, method, params, function(e, r)
      cb(e, r)
    end)
    if not ok or not sent then
      cb(err_table("request " .. method .. " could not be sent" .. (ok and "" or (": " .. tostring(sent)))), nil)
    end
  end)
end

function M.notify(method, params)
  if conn.rpc then
    pcall(conn.rpc.notify, method, params)
  end
end

function M.running()
  return conn.state ~= "stopped"
end

--- Graceful stop: `shutdown` then `exit`; cb() when the process is gone (or 5 s).
function M.stop(cb)
  cb = cb or function() end
  if conn.state == "stopped" or not conn.rpc then
    return cb()
  end
  local client = conn.rpc
  local generation = conn.generation
  local finished = false
  local function finish()
    if finished then
      return
    end
    finished = true
    cb()
  end
  conn.stop_cb = finish
  conn.stopping = true
  local function exit_now()
    pcall(client.notify, "exit", vim.empty_dict())
  end
  local ok = pcall(client.request, "shutdown", nil, function()
    exit_now()
  end)
  if not ok then
    exit_now()
  end
  vim.defer_fn(function()
    if conn.generation == generation and conn.state ~= "stopped" then
      if client.terminate then
        pcall(client.terminate)
      elseif client.pid then
        pcall(vim.loop.kill, client.pid, 15)
      end
      conn.state = "stopped"
      conn.rpc = nil
    end
    finish()
  end, 5000)
end

return M
