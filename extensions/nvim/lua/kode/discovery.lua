-- How kode.nvim finds the server command.
--
-- Order (first match wins):
--   1. `cmd` given to setup() (a list, or a string split on whitespace), used as is;
--   2. a bundled frozen binary in the plugin folder: <plugin>/bin/kode-rpc/kode-rpc (one-dir
--      build, `python packaging/build.py --dist <plugin>/bin`) or <plugin>/bin/kode-rpc(.exe);
--   3. `kode-rpc` on PATH (vim.fn.executable)      -> {"kode-rpc", "serve", "--log-level", <log_level>};
--   4. a Python that has the package               -> {"python3", "-m", "kode_rpc", "serve", "--log-level", <log_level>}
--      ("python" where there is no "python3", e.g. Windows).
-- The data dir is passed through the environment (KODE_DATA_DIR), so it works
-- with any of them.
local M = {}

local function copy(list)
  local out = {}
  for i, v in ipairs(list) do
    out[i] = v
  end
  return out
end

--- The plugin's root folder (two levels above this file: lua/kode/discovery.lua).
local function plugin_root()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  return vim.fn.fnamemodify(src, ":p:h:h:h")
end

--- A frozen kode-rpc shipped inside the plugin folder, or nil.
function M.bundled(root)
  root = root or plugin_root()
  local exe = vim.fn.has("win32") == 1 and ".exe" or ""
  for _, rel in ipairs({ "/bin/kode-rpc/kode-rpc" .. exe, "/bin/kode-rpc" .. exe }) do
    local path = root .. rel
    if vim.fn.executable(path) == 1 and vim.fn.isdirectory(path) == 0 then
      return path
    end
  end
  return nil
end

--- @param cfg table the plugin config (uses cfg.cmd, cfg.log_level)
--- @return string[] cmd, string source ("config" | "bundled" | "path" | "python")
function M.resolve(cfg)
  cfg = cfg or {}
  local level = cfg.log_level or "WARNING"
  if cfg.cmd ~= nil then
    if type(cfg.cmd) == "string" then
      return vim.split(vim.trim(cfg.cmd), "%s+"), "config"
    end
    assert(type(cfg.cmd) == "table" and #cfg.cmd > 0, "kode: setup{cmd=...} must be a non-empty list")
    return copy(cfg.cmd), "config"
  end
  local bundled = M.bundled(cfg.plugin_root)
  if bundled then
    return { bundled, "serve", "--log-level", level }, "bundled"
  end
  if vim.fn.executable("kode-rpc") == 1 then
    return { "kode-rpc", "serve", "--log-level", level }, "path"
  end
  local py = "python3"
  if vim.fn.executable("python3") ~= 1 and vim.fn.executable("python") == 1 then
    py = "python"
  end
  return { py, "-m", "kode_rpc", "serve", "--log-level", level }, "python"
end

return M
