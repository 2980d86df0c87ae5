-- Chat buffers: one per agent. The transcript grows at an extmark (the
-- "output mark"); everything below the transcript is the user's draft, so
-- streamed text never lands in what the user is typing.
--
-- Every function here edits buffers and must run on the main loop; callers
-- go through `vim.schedule` (init.lua's `ui()`), in arrival order.
local api = vim.api

local M = {}

local ns = api.nvim_create_namespace("kode_chat")
M.ns = ns

--- agentId -> { buf, out_mark, tools = {callId -> mark}, agent = AgentInfo? }
M.chats = {}

local function valid(chat)
  return chat and chat.buf and api.nvim_buf_is_valid(chat.buf)
end

function M.get(agent_id)
  local chat = M.chats[agent_id]
  if valid(chat) then
    return chat
  end
  return nil
end

function M.agent_of_buf(buf)
  local ok, id = pcall(api.nvim_buf_get_var, buf, "kode_agent_id")
  if ok then
    return id
  end
  return nil
end

local function out_pos(chat)
  local pos = api.nvim_buf_get_extmark_by_id(chat.buf, ns, chat.out_mark, {})
  return pos[1], pos[2]
end

local function set_out(chat, row, col)
  chat.out_mark = api.nvim_buf_set_extmark(chat.buf, ns, row, col, { id = chat.out_mark, right_gravity = true })
end

local function follow(chat)
  -- Windows that show the chat but are not the one the user works in follow
  -- the output; the current window is left alone (the user may be typing).
  local cur = api.nvim_get_current_win()
  local last = api.nvim_buf_line_count(chat.buf)
  for _, win in ipairs(api.nvim_list_wins()) do
    if win ~= cur and api.nvim_win_get_buf(win) == chat.buf then
      pcall(api.nvim_win_set_cursor, win, { last, 0 })
    end
  end
end

--- Insert text (may contain newlines) at the output mark.
local function insert(chat, text)
  local row, col = out_pos(chat)
  local parts = vim.split(text, "\n", { plain = true })
  api.nvim_buf_set_text(chat.buf, row, col, row, col, parts)
  -- Put the mark at the end of what was written (explicitly: do not rely on
  -- extmark gravity, which differs for zero-width inserts across versions).
  local new_row = row + #parts - 1
  local new_col = (#parts == 1) and (col + #parts[1]) or #parts[#parts]
  set_out(chat, new_row, new_col)
end

--- Start a new transcript line now (if the last one is not empty).
local function start_line(chat)
  chat.need_nl = false
  local _, col = out_pos(chat)
  if col > 0 then
    insert(chat, "\n")
  end
end

--- Write text at the end of the transcript. A pending line break (see
--- fresh_line) is inserted first, so the transcript never ends in an empty
--- line the user could mistake for the prompt line.
local function write(chat, text)
  if text == nil or text == "" then
    return
  end
  if chat.need_nl then
    start_line(chat)
  end
  insert(chat, text)
end

--- Make the next write start on a fresh line (lazily).
local function fresh_line(chat)
  chat.need_nl = true
end

--- Write one whole line of transcript (possibly several, split on newlines).
function M.line(chat, text)
  start_line(chat)
  write(chat, text)
  fresh_line(chat)
  follow(chat)
end

--- Append streamed text to the last transcript line, splitting on newlines.
function M.stream(chat, delta)
  write(chat, delta)
  follow(chat)
end

function M.fresh_line(chat)
  fresh_line(chat)
end

local function header(agent_id, info)
  local model = ""
  if type(info) == "table" and type(info.model) == "table" then
    model = tostring(info.model.provider or "")
    if info.model.model and info.model.model ~= vim.NIL then
      model = model .. "/" .. tostring(info.model.model)
    end
  end
  local h = "# kode agent " .. agent_id
  if model ~= "" then
    h = h .. " (" .. model .. ")"
  end
  return h
end

local function set_mappings(buf)
  local opts = { buffer = buf, silent = true, desc = "kode: send the prompt" }
  vim.keymap.set("n", "<CR>", function()
    require("kode").send_from_buffer(buf)
  end, opts)
  vim.keymap.set("i", "<C-s>", function()
    vim.cmd("stopinsert")
    require("kode").send_from_buffer(buf)
  end, opts)
  vim.keymap.set("n", "<C-c>", function()
    require("kode").interrupt()
  end, { buffer = buf, silent = true, desc = "kode: interrupt the turn" })
end

--- Create (or return) the chat buffer of an agent.
function M.ensure(agent_id, info)
  local chat = M.get(agent_id)
  if chat then
    if info then
      chat.agent = info
    end
    return chat, false
  end
  local name = "kode://" .. agent_id
  local old = vim.fn.bufnr(name)
  if old ~= -1 then
    pcall(api.nvim_buf_delete, old, { force = true })
  end
  local buf = api.nvim_create_buf(true, true)
  api.nvim_buf_set_name(buf, name)
  api.nvim_buf_set_var(buf, "kode_agent_id", agent_id)
  vim.bo[buf].buftype = "nofile"
  vim.bo[buf].bufhidden = "hide"
  vim.bo[buf].swapfile = false
  vim.bo[buf].filetype = "kode"
  local h = header(agent_id, info)
  api.nvim_buf_set_lines(buf, 0, -1, false, { h, "" })
  chat = { buf = buf, tools = {}, agent = info, agent_id = agent_id }
  chat.out_mark = api.nvim_buf_set_extmark(buf, ns, 0, #h, { right_gravity = true })
  set_mappings(buf)
  M.chats[agent_id] = chat
  return chat, true
end

--- Wipe the transcript (keeps the draft) for a re-render.
function M.reset(chat, info)
  if info then
    chat.agent = info
  end
  local row = out_pos(chat)
  local h = header(chat.agent_id, chat.agent)
  api.nvim_buf_clear_namespace(chat.buf, ns, 0, -1)
  api.nvim_buf_set_lines(chat.buf, 0, row + 1, false, { h })
  chat.out_mark = api.nvim_buf_set_extmark(chat.buf, ns, 0, #h, { right_gravity = true })
  chat.tools = {}
  chat.need_nl = false
  if api.nvim_buf_line_count(chat.buf) == 1 then
    api.nvim_buf_set_lines(chat.buf, 1, 1, false, { "" })
  end
end

--- The draft (lines below the transcript), or nil when it is blank.
function M.take_draft(chat, cursor_row)
  local row = out_pos(chat)
  local total = api.nvim_buf_line_count(chat.buf)
  local lines = api.nvim_buf_get_lines(chat.buf, row + 1, total, false)
  local text = vim.trim(table.concat(lines, "\n"))
  if text ~= "" then
    api.nvim_buf_set_lines(chat.buf, row + 1, total, false, { "" })
    return text
  end
  -- Blank draft: the current line of the transcript (e.g. resend a prompt).
  if cursor_row and cursor_row - 1 <= row then
    local line = api.nvim_buf_get_lines(chat.buf, cursor_row - 1, cursor_row, false)[1] or ""
    line = vim.trim((line:gsub("^>%s?", "")))
    if line ~= "" and not line:match("^# kode agent ") then
      return line
    end
  end
  return nil
end

local function preview(call)
  local p = call.inputPreview
  if type(p) ~= "string" or p == "" then
    local ok, enc = pcall(vim.json.encode, call.input or vim.empty_dict())
    p = ok and enc or ""
  end
  p = p:gsub("\n", " ")
  if #p > 100 then
    p = p:sub(1, 97) .. "..."
  end
  return p
end

local function tool_text(call, state)
  return string.format("[tool] %s %s [%s]", tostring(call.name), preview(call), state)
end

function M.tool_start(chat, call)
  start_line(chat)
  local row = out_pos(chat)
  local mark = api.nvim_buf_set_extmark(chat.buf, ns, row, 0, { right_gravity = false })
  chat.tools[call.id] = mark
  write(chat, tool_text(call, tostring(call.state or "PENDING")))
  fresh_line(chat)
  follow(chat)
end

function M.tool_end(chat, call)
  local mark = chat.tools[call.id]
  local state = tostring(call.state or "")
  if call.durationMs and call.durationMs ~= vim.NIL then
    state = state .. " " .. tostring(call.durationMs) .. "ms"
  end
  if not mark then
    M.line(chat, tool_text(call, state))
    return
  end
  local row = api.nvim_buf_get_extmark_by_id(chat.buf, ns, mark, {})[1]
  local out_row, out_col = out_pos(chat)
  local old = api.nvim_buf_get_lines(chat.buf, row, row + 1, false)[1] or ""
  local start = old:find(" %[[^%[]*%]$")
  if not start then
    M.line(chat, tool_text(call, state))
    return
  end
  local new_suffix = " [" .. state .. "]"
  api.nvim_buf_set_text(chat.buf, row, start - 1, row, #old, { new_suffix })
  if out_row == row then
    set_out(chat, row, out_col - (#old - (start - 1)) + #new_suffix)
  end
  if type(call.error) == "string" and call.error ~= "" then
    M.line(chat, "  error: " .. call.error:gsub("\n", " "))
  end
end

--- Make sure a window shows the chat, without moving the cursor.
function M.reveal(chat, split)
  for _, win in ipairs(api.nvim_list_wins()) do
    if api.nvim_win_get_buf(win) == chat.buf then
      return win
    end
  end
  local cur = api.nvim_get_current_win()
  local win = M.show(chat, split)
  if api.nvim_win_is_valid(cur) then
    api.nvim_set_current_win(cur)
  end
  return win
end

--- Open (or focus) a window on the chat buffer.
function M.show(chat, split)
  for _, win in ipairs(api.nvim_list_wins()) do
    if api.nvim_win_get_buf(win) == chat.buf then
      api.nvim_set_current_win(win)
      return win
    end
  end
  vim.cmd(split or "botright vsplit")
  api.nvim_win_set_buf(0, chat.buf)
  local win = api.nvim_get_current_win()
  vim.wo[win].wrap = true
  vim.wo[win].linebreak = true
  pcall(api.nvim_win_set_cursor, win, { api.nvim_buf_line_count(chat.buf), 0 })
  return win
end

return M
