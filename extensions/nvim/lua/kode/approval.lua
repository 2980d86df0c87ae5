-- Asking the user about a tool call, one prompt at a time, through
-- vim.ui.select({"Allow", "Deny", "Always allow"}).
--
-- 0.10+: the server sends `approval/request`; vim.lsp.rpc runs our handler in a
--        coroutine, so the handler yields until the user has picked and
--        returns {decision, remember} as the response.
-- 0.7-0.9: the handler would run synchronously (it cannot wait for a picker),
--        so the client initializes with capabilities.approvals = false, prompts
--        when a `permission_required` event arrives and answers with
--        `agent/decide`. `agent/decide` has no `remember`, so "Always allow" is
--        remembered by the plugin (per agent and tool, for this session).
local M = {}

M.choices = { "Allow", "Deny", "Always allow" }

local queue = {}
local busy = false
local active = nil -- the item whose picker is open

local function describe(req)
  local call = req.call or {}
  local title = req.title
  if type(title) ~= "string" or title == "" then
    title = "Run tool " .. tostring(call.name)
  end
  -- One line: pickers (and the default inputlist) show the prompt as a title.
  local parts = { "kode: " .. title }
  local subject = req.subject
  if type(subject) == "table" and subject.type == "command" and subject.command then
    parts[#parts + 1] = "$ " .. tostring(subject.command)
  elseif type(subject) == "table" and subject.type == "file_change" and subject.path then
    parts[#parts + 1] = "file " .. tostring(subject.path)
  elseif type(call.inputPreview) == "string" and call.inputPreview ~= "" then
    parts[#parts + 1] = call.inputPreview
  end
  local s = table.concat(parts, "  "):gsub("%s*\n%s*", " ")
  if #s > 200 then
    s = s:sub(1, 197) .. "..."
  end
  return s
end

local function pump()
  if busy or #queue == 0 then
    return
  end
  busy = true
  local item = table.remove(queue, 1)
  active = item
  local function finish(choice)
    if item.answered then
      return
    end
    item.answered = true
    busy = false
    active = nil
    local decision, remember = "deny", false
    if choice == "Allow" then
      decision = "allow"
    elseif choice == "Always allow" then
      decision, remember = "allow", true
    end
    -- Run the continuation and the next prompt outside the picker's callback.
    vim.schedule(function()
      item.cb(decision, remember, choice)
      pump()
    end)
  end
  local ok, err = pcall(vim.ui.select, M.choices, {
    prompt = describe(item.req),
    kind = "kode_approval",
  }, finish)
  if not ok then
    vim.notify("kode: approval prompt failed: " .. tostring(err), vim.log.levels.ERROR)
    finish(nil)
  end
end

--- The server went away: drop every prompt (queued ones get decision nil; a
--- picker still open is ignored when it is answered).
function M.reset()
  if active then
    active.answered = true
    active = nil
  end
  busy = false
  local q = queue
  queue = {}
  for _, item in ipairs(q) do
    vim.schedule(function()
      item.cb(nil, false, nil)
    end)
  end
end

--- Drop a prompt that has not been shown yet (its approval was decided
--- elsewhere). Its cb gets decision nil.
function M.cancel(approval_id)
  for i, item in ipairs(queue) do
    if item.req.approvalId == approval_id then
      table.remove(queue, i)
      vim.schedule(function()
        item.cb(nil, false, nil)
      end)
      return true
    end
  end
  return false
end

--- Queue a prompt. cb(decision "allow"|"deny", remember bool, choice string|nil)
--- runs on the main loop; decision is nil when the prompt was cancelled.
function M.ask(req, cb)
  table.insert(queue, { req = req, cb = cb })
  pump()
end

--- For the 0.10+ server_request handler (inside vim.lsp.rpc's coroutine):
--- waits for the user's choice and returns the `approval/request` result.
function M.ask_blocking(req)
  local co = coroutine.running()
  if not co or (coroutine.isyieldable and not coroutine.isyieldable()) then
    return { decision = "deny", note = "the client cannot prompt here" }
  end
  local result, waiting
  M.ask(req, function(decision, remember)
    result = { decision = decision or "deny", remember = remember or false }
    if waiting then
      local ok, err = coroutine.resume(co)
      if not ok then
        vim.notify("kode: approval reply failed: " .. tostring(err), vim.log.levels.ERROR)
      end
    end
  end)
  if not result then
    waiting = true
    coroutine.yield()
  end
  return result
end

return M
