import { ErrorCodes } from "./protocol.js";

/**
 * `ErrorCodes` (and the `ErrorCode` / `ErrorName` types) are GENERATED into protocol.ts
 * from the schema's `errors`, the server's one definition of its error codes
 * (`npm run gen-types`). `-32001` and `-32002` carry kode-rpc's meanings (unavailable, not
 * found), NOT the names LSP gives those numbers: `vscode-jsonrpc`'s own `ErrorCodes` table
 * uses the LSP names; use this one with kode-rpc.
 */
export { ErrorCodes, type ErrorCode, type ErrorName } from "./protocol.js";

/** Every kode-rpc error carries `data.reason`; some carry more (see the protocol doc). */
export interface KodeErrorData {
  reason?: string;
  errors?: { field: string; message: string }[];
  retryable?: boolean;
  type?: string;
  /** `-32012`: the process that runs the agent. */
  owner?: { pid: number; host: string };
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

/**
 * `KodeClient.start` / `resolveServerCommand` could not find a server to run:
 * `reason: "not_found"` (nothing in the discovery order worked; `tried` lists what was
 * tried) or `"bad_server_path"` (`serverPath` was given but is not an executable file;
 * `path` is it). Hosts turn it into advice about their own setting (e.g. the VS Code
 * extension names `kode.serverPath`).
 */
export class KodeServerNotFoundError extends Error {
  override readonly name = "KodeServerNotFoundError";
  constructor(
    message: string,
    readonly reason: "not_found" | "bad_server_path",
    readonly tried: string[],
    readonly path?: string,
  ) {
    super(message);
  }
}
