// Preload of the window: exposes `window.kode`, a fixed set of functions, never ipcRenderer
// itself. CommonJS on purpose: a sandboxed preload can `require("electron")` but cannot be an
// ES module or require local files, so the channel names are repeated here (see sidecar.js).
const { contextBridge, ipcRenderer } = require("electron");

/** Listener that gets the payload only (the IPC event holds `sender`; keep it out of the page). */
function subscribe(channel, fn) {
  const listener = (_event, payload) => fn(payload);
  ipcRenderer.on(channel, listener);
  return () => ipcRenderer.removeListener(channel, listener);
}

contextBridge.exposeInMainWorld("kode", {
  /** `{agentId?, model?: {provider, model?, script?}, systemPrompt?, permission?: {mode?: "approval"|"readonly"}}` -> AgentInfo */
  createAgent: (config) => ipcRenderer.invoke("kode:createAgent", config ?? {}),
  /** -> `{messageId, turnId, queued}`; the turn streams through onEvent. */
  send: (agentId, text) => ipcRenderer.invoke("kode:send", { agentId, text }),
  interrupt: (agentId) => ipcRenderer.invoke("kode:interrupt", { agentId }),
  listAgents: (params) => ipcRenderer.invoke("kode:listAgents", params ?? {}),
  /** Answer a prompt from onApproval: `decision` "allow" | "deny"; `opts` `{note?, remember?}` -> `{accepted}` */
  decide: (approvalId, decision, opts) => ipcRenderer.invoke("kode:decide", { ...(opts ?? {}), approvalId, decision }),
  /** With an agentId: the agent's status. Without: `{state, pid, serverInfo, pendingApprovals}`. */
  status: (agentId) => ipcRenderer.invoke("kode:status", agentId === undefined ? {} : { agentId }),
  /** Each returns an unsubscribe function. */
  onEvent: (fn) => subscribe("kode:event", fn),
  onApproval: (fn) => subscribe("kode:approval", fn),
  onServerState: (fn) => subscribe("kode:server-state", fn),
});
