/** The client's public types: options, listeners, approvals, states, restart info. */
import type { CancellationToken } from "vscode-jsonrpc/node";
import type { ApprovalRequest, CompleteResult, EventEnvelope, TurnError } from "./protocol.js";

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  /** Optional; server DEBUG lines and connection traces go here when present. */
  debug?(message: string): void;
}

export interface Disposable {
  dispose(): void;
}

/**
 * The result of `agent/complete` (`CompleteResult`), narrowed on `status`: a turn that
 * failed (`done {reason: "error"}`, e.g. a provider's 401, quota or 5xx after retries)
 * is a result with `status: "error"` and `error: {type, message, retryable}` (`type` from
 * the -32020 vocabulary: `authentication`, `rate_limit`, `quota_exceeded`, `timeout`,
 * `connection`, `service_unavailable`, `invalid_request`, `invalid_response`,
 * `internal`, ...), not a rejected promise. `error` is set exactly when `status` is
 * "error".
 */
export type CompleteOutcome =
  | (CompleteResult & { status: "error"; error: TurnError })
  | (CompleteResult & { status: "ok" | "paused" | "interrupted"; error?: null });

export type Channel = EventEnvelope["channel"];
export type AgentEvent = EventEnvelope["event"];
export type EventListener = (envelope: EventEnvelope) => void;

/** What an approval handler returns. Anything else (or a throw) means deny. */
export interface ApprovalDecision {
  decision: "allow" | "deny";
  /** With `allow`: allow this tool for the agent from now on. */
  remember?: boolean;
  /** Passed to the model with the decision. */
  note?: string;
}

export interface ApprovalContext {
  /** Aborted when the server withdraws the request (timeout, decided elsewhere, interrupt). */
  signal: AbortSignal;
  token: CancellationToken;
}

export type ApprovalHandler = (
  request: ApprovalRequest,
  context: ApprovalContext,
) => ApprovalDecision | Promise<ApprovalDecision>;

export type ClientState = "starting" | "running" | "restarting" | "stopping" | "stopped" | "failed";

export interface RestartInfo {
  /** Consecutive restart attempt that succeeded (1 = first try). */
  attempt: number;
  /** How the previous server process ended. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  previousPid: number | undefined;
  pid: number | undefined;
  /** Agents re-subscribed with `agent/resume`, with the `since` cursor used. */
  resumed: { agentId: string; since: number | undefined; replayed: number }[];
  /** Agents whose resume failed (e.g. deleted meanwhile: `-32002`). */
  failed: { agentId: string; error: Error }[];
}

export interface RequestOptions {
  /** vscode-jsonrpc cancellation: cancelling sends `$/cancelRequest`; the request then rejects with `-32800`. */
  token?: CancellationToken;
  /** Same as `token`, as an AbortSignal. */
  signal?: AbortSignal;
  /** Cancel (with `$/cancelRequest`) when no answer came within this many ms. */
  timeoutMs?: number;
}

export interface KodeClientOptions {
  // --- how to start the server (see resolveServerCommand for the order) ---
  /** Explicit command, used verbatim with `args` (no discovery, nothing appended). */
  command?: string;
  args?: string[];
  /** Path of a `kode-rpc` executable (e.g. a user setting). Must exist. */
  serverPath?: string;
  /** Path of a bundled (frozen) `kode-rpc` binary; skipped when the file is missing. */
  bundledPath?: string;
  /** Extra arguments after `serve` for discovered commands (e.g. `["--log-level", "debug"]`). */
  serverArgs?: string[];
  /** Environment of the server (default `process.env`); the dir options below are added to it. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Sets `KODE_DATA_DIR` / `KODE_LOG_DIR` / `KODE_CONFIG_DIR` for the server. */
  dataDir?: string;
  logDir?: string;
  configDir?: string;

  // --- initialize ---
  clientInfo?: { name: string; version?: string };
  workspaceFolders?: string[];
  /** Handler for `approval/request`; see also `setApprovalHandler`. */
  approvalHandler?: ApprovalHandler;
  /**
   * `capabilities.approvals` sent in `initialize` (fixed for the client's life). Default:
   * true when `approvalHandler` is given. When false, the server sends no
   * `approval/request`; the client then runs its approval handler (if one is set) on
   * live `permission_required` events and answers with `agent/decide`.
   */
  approvals?: boolean;

  // --- behaviour ---
  logger?: Logger;
  /** Timeout of spawn + `initialize` (default 30000 ms). */
  startTimeoutMs?: number;
  /** Restart the server when it exits unexpectedly (default true). */
  autoRestart?: boolean;
  /**
   * Kill the server on the host's SIGINT/SIGTERM/SIGHUP (re-raising the signal when
   * nobody else handles it). Default true; hosts with their own signal handling
   * (Electron) pass false and dispose() themselves. The server is killed on the
   * host's `exit` either way.
   */
  handleSignals?: boolean;
  /** Consecutive restart attempts before giving up (state `failed`); default 5. */
  maxRestarts?: number;
  /** First restart delay (default 200 ms), doubled per consecutive attempt up to `maxRestartDelayMs` (default 5000 ms). */
  restartDelayMs?: number;
  maxRestartDelayMs?: number;
  /** A server that ran this long resets the consecutive-attempt count (default 60000 ms). */
  restartResetMs?: number;
  /** `agent/resume` strategy used after a restart (default "crash"). */
  resumeStrategy?: "crash" | "manual";
  /** How long `dispose()` waits for shutdown + exit before killing (default 3000 ms). */
  shutdownTimeoutMs?: number;
}

