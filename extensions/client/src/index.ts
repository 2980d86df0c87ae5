export {
  KodeClient,
  type KodeClientOptions,
  type Logger,
  type Disposable,
  type Channel,
  type AgentEvent,
  type EventListener,
  type ApprovalDecision,
  type ApprovalContext,
  type ApprovalHandler,
  type ClientState,
  type RestartInfo,
  type RequestOptions,
  type CompleteOutcome,
} from "./client.js";
export { resolveServerCommand, which, type ServerCommand, type DiscoveryOptions } from "./discovery.js";
export { ErrorCodes, KodeRpcError, KodeConnectionError, type ErrorCode, type ErrorName, type KodeErrorData } from "./errors.js";
export { CancellationTokenSource, CancellationToken } from "vscode-jsonrpc/node";
export * from "./protocol.js";
