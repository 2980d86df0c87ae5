-- Error codes of kode-rpc protocol v1 (`code` of a JSON-RPC error response), by the
-- names the TypeScript client uses (`ErrorCodes`). The server's one definition is
-- kode_rpc/protocol/errors.py (the schema's `errors`: `kode-rpc schema`); test/e2e.lua
-- checks this table against the running server's schema, so a code added or changed
-- there fails the plugin's CI until it is copied here.
--
-- -32001 and -32002 carry kode-rpc's meanings (unavailable, not found), NOT the names
-- LSP gives those numbers (UnknownErrorCode, ServerNotInitialized).
local M = {}

M.codes = {
  ParseError = -32700, -- parse error: body is not JSON, or a malformed frame
  InvalidRequest = -32600, -- invalid request
  MethodNotFound = -32601, -- method not found
  InvalidParams = -32602, -- invalid params; data.errors = [{field, message}]
  InternalError = -32603, -- the server's own fault (never for bad input)
  RequestCancelled = -32800, -- request cancelled by $/cancelRequest
  Unavailable = -32001, -- overloaded, shutting down or store unavailable; retryable
  NotFound = -32002, -- agent, template or approval not found
  NotInitialized = -32003, -- not initialized / already initialized
  ApprovalNotPending = -32011, -- approval already decided; data.recordedDecision
  AgentLocked = -32012, -- agent run by another process; data.owner {pid, host}
  TooLarge = -32013, -- message larger than 64 MiB
  UnsupportedProtocol = -32014, -- unsupported protocolVersion; data.supported
  -- Provider error (data.type, data.retryable). Not a failed turn: agent/complete
  -- answers that with a result {status = "error", error = {type, message, retryable}}.
  ProviderError = -32020,
}

--- The name of `code` (e.g. "NotFound"), or nil.
function M.name(code)
  for name, c in pairs(M.codes) do
    if c == code then
      return name
    end
  end
  return nil
end

--- True when `err` (a JSON-RPC error table) has the code called `name`.
function M.is(err, name)
  local code = M.codes[name]
  assert(code, "kode.errors: unknown error name " .. tostring(name))
  return type(err) == "table" and err.code == code
end

return M
