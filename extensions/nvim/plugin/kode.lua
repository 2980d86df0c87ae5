-- Commands of kode.nvim. The plugin works without setup() (defaults:
-- discovered server, the server's default model and permission mode).
if vim.g.loaded_kode then
  return
end
vim.g.loaded_kode = true

local function kode()
  return require("kode")
end

local cmd = vim.api.nvim_create_user_command

cmd("KodeChat", function()
  kode().open_chat()
end, { desc = "Open (or focus) the chat of the current kode agent" })

cmd("KodeSend", function(opts)
  if opts.args ~= "" then
    kode().send(opts.args)
  else
    kode().send_from_buffer()
  end
end, { nargs = "*", desc = "Send text (or, in a chat buffer, the prompt) to the kode agent" })

cmd("KodeInterrupt", function()
  kode().interrupt()
end, { desc = "Interrupt the kode agent's running turn" })

cmd("KodeCompact", function(opts)
  kode().compact(opts.args)
end, { nargs = "*", desc = "Compress the kode agent's context now (optional focus instructions)" })

cmd("KodeAgents", function()
  kode().pick_agent()
end, { desc = "Pick a stored kode agent and resume it" })

cmd("KodeNew", function()
  kode().new_chat()
end, { desc = "Create a new kode agent and open its chat" })

cmd("KodeDiff", function(opts)
  kode().diff(opts.args ~= "" and vim.trim(opts.args) or nil)
end, { nargs = "?", desc = "Show the last turn's diff (or checkpoint cp_N's) in a scratch buffer" })

cmd("KodeRewind", function(opts)
  local cp, restore
  for _, w in ipairs(vim.split(opts.args, "%s+")) do
    if w:match("^cp_") then
      cp = w
    elseif w == "code" or w == "conversation" or w == "both" then
      restore = w
    elseif w ~= "" then
      vim.notify("kode: :KodeRewind [cp_N] [code|conversation|both]", vim.log.levels.ERROR)
      return
    end
  end
  kode().rewind(cp, restore)
end, { nargs = "*", desc = "Rewind files and/or conversation to before a checkpoint's turn (asks first)" })

cmd("KodeStop", function()
  kode().stop()
end, { desc = "Shut the kode-rpc server down" })

cmd("KodeInfo", function()
  print(vim.inspect(kode().info()))
end, { desc = "Show the kode connection state" })
