/**
 * Error codes of kode-rpc protocol v1.
 *
 * `-32001` and `-32002` carry kode-rpc's meanings (overloaded / shutting down, and
 * not found), NOT the names LSP gives those numbers (UnknownErrorCode and
 * ServerNotInitialized). `vscode-jsonrpc`'s own `ErrorCodes` table uses the LSP names:
 * use this table with kode-rpc.
 */
export const ErrorCodes = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  InternalError: -32603,
  /** The request was cancelled with `$/cancelRequest`. */
  RequestCancelled: -32800,
  /** Overloaded (`pool_full`) or shutting down (`shutting_down`); retryable. Not LSP's UnknownErrorCode. */
  Unavailable: -32001,
  /** Agent, template or approval not found. Not LSP's ServerNotInitialized. */
  NotFound: -32002,
  /** Not initialized / already initialized. */
  NotInitialized: -32003,
  /** The approval was already decided (`data.recordedDecision`). */
  ApprovalNotPending: -32011,
  /** The agent is run by another process (`data.pid`, `data.host`). */
  AgentLocked: -32012,
  /** Message larger than 64 MiB. */
  TooLarge: -32013,
  /** Unsupported protocolVersion (`data.supported`). */
  UnsupportedProtocol: -32014,
  /** Provider error (`data.type`, `data.retryable`). */
  ProviderError: -32020,
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** Every kode-rpc error carries `data.reason`; some carry more (see the protocol doc). */
export interface KodeErrorData {
  reason?: string;
  errors?: { field: string; message: string }[];
  retryable?: boolean;
  type?: string;
  [key: string]: unknown;
}

/** An error response from the server: `{code, message, data}` exactly as sent. */
export class KodeRpcError extends Error {
  override readonly name = "KodeRpcError";
  constructor(
    readonly code: number,
    message: string,
    readonly data: KodeErrorData = {},
    /** The method of the request that failed. */
    readonly method?: string,
  ) {
    super(message);
  }

  /** `data.reason`, e.g. `agent_not_found`, `invalid_params`, `shutting_down`. */
  get reason(): string | undefined {
    return typeof this.data?.reason === "string" ? this.data.reason : undefined;
  }

  /** True for `-32001` and for errors whose `data.retryable` is true. */
  get retryable(): boolean {
    return this.code === ErrorCodes.Unavailable || this.data?.retryable === true;
  }
}

/**
 * The request never got a response because the server process went away (crash,
 * kill, `dispose()`) or could not be started. Whether the server acted on it is
 * unknown: an acknowledged `agent/send` survives a crash, an unacknowledged one may
 * or may not have been stored.
 */
export class KodeConnectionError extends Error {
  override readonly name = "KodeConnectionError";
  constructor(
    message: string,
    readonly method?: string,
    readonly exitCode?: number | null,
    readonly signal?: NodeJS.Signals | null,
  ) {
    super(message);
  }
}
