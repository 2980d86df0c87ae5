export { KodeClient } from "./client.js";
export type {
  KodeClientOptions,
  Logger,
  Disposable,
  Channel,
  AgentEvent,
  EventListener,
  ApprovalDecision,
  ApprovalContext,
  ApprovalHandler,
  ClientState,
  RestartInfo,
  RequestOptions,
  CompleteOutcome,
} from "./types.js";
export { resolveServerCommand, which, type ServerCommand, type DiscoveryOptions } from "./discovery.js";
export {
  ErrorCodes,
  KodeRpcError,
  KodeConnectionError,
  KodeServerNotFoundError,
  type ErrorCode,
  type ErrorName,
  type KodeErrorData,
} from "./errors.js";
export { CancellationTokenSource, CancellationToken } from "vscode-jsonrpc/node";
export * from "./protocol.js";
