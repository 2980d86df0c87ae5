/**
 * Settings -> library options. Discovery order (the library's `resolveServerCommand`):
 *   1. `kode.serverPath` (must exist),
 *   2. the bundled binary `<extensionPath>/bin/kode-rpc/kode-rpc[.exe]` (skipped when absent),
 *   3. `kode-rpc` on PATH,
 *   4. `python3 -m kode_rpc`, then `python -m kode_rpc` (`py -3` first on Windows).
 */
import { accessSync, chmodSync, constants, statSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import type { AgentConfig, KodeClientOptions } from "@kode-rpc/client";

export type PermissionMode = "auto" | "approval" | "readonly";
export type Provider = "anthropic" | "openai" | "scripted" | "echo";

export interface KodeSettings {
  serverPath: string;
  defaultProvider: string;
  defaultModel: string;
  permissionMode: PermissionMode;
  dataDir: string;
}

export const DEFAULT_SETTINGS: KodeSettings = {
  serverPath: "",
  defaultProvider: "",
  defaultModel: "",
  permissionMode: "approval",
  dataDir: "",
};

export interface HostInfo {
  extensionPath: string;
  /** First workspace folder (the agents' sandbox workDir), if a folder is open. */
  workspaceFolder?: string;
  home: string;
  platform?: NodeJS.Platform;
}

const PROVIDERS = new Set<string>(["anthropic", "openai", "scripted", "echo"]);
const MODES = new Set<string>(["auto", "approval", "readonly"]);

/** Reads settings from any getter (vscode's `WorkspaceConfiguration.get`), with defaults and validation. */
export function readSettings(get: (key: string) => unknown): KodeSettings {
  const str = (k: keyof KodeSettings) => {
    const v = get(k);
    return typeof v === "string" ? v.trim() : DEFAULT_SETTINGS[k];
  };
  const mode = str("permissionMode");
  return {
    serverPath: str("serverPath"),
    defaultProvider: str("defaultProvider"),
    defaultModel: str("defaultModel"),
    permissionMode: (MODES.has(mode) ? mode : DEFAULT_SETTINGS.permissionMode) as PermissionMode,
    dataDir: str("dataDir"),
  };
}

/** Where a release puts the frozen server (`python packaging/build.py` output). */
export function bundledServerPath(extensionPath: string, platform: NodeJS.Platform = process.platform): string {
  return join(extensionPath, "bin", "kode-rpc", platform === "win32" ? "kode-rpc.exe" : "kode-rpc");
}

/**
 * A bundled binary that lost its executable bit (some unzip paths drop it) would be
 * skipped by discovery: restore it. Returns what was done; never throws.
 */
export function ensureExecutable(
  path: string,
  platform: NodeJS.Platform = process.platform,
): "missing" | "ok" | "fixed" | "failed" {
  try {
    if (!statSync(path).isFile()) return "missing";
  } catch {
    return "missing";
  }
  if (platform === "win32") return "ok";
  try {
    accessSync(path, constants.X_OK);
    return "ok";
  } catch {
    try {
      chmodSync(path, 0o755);
      return "fixed";
    } catch {
      return "failed";
    }
  }
}

/** Expands `~`, `${userHome}` and `${workspaceFolder}`; relative paths resolve against the workspace folder. */
export function expandPath(p: string, host: Pick<HostInfo, "home" | "workspaceFolder">): string {
  if (!p) return p;
  let out = p;
  if (out === "~" || out.startsWith("~/") || out.startsWith("~\\")) out = host.home + out.slice(1);
  out = out.replace(/\$\{userHome\}/g, host.home);
  if (host.workspaceFolder) out = out.replace(/\$\{workspaceFolder\}/g, host.workspaceFolder);
  if (!isAbsolute(out)) out = resolve(host.workspaceFolder ?? host.home, out);
  return out;
}

/** The `KodeClient.start` options that come from settings and the host. */
export function clientStartOptions(
  settings: KodeSettings,
  host: HostInfo,
): Pick<KodeClientOptions, "serverPath" | "bundledPath" | "dataDir" | "workspaceFolders" | "cwd"> {
  const opts: ReturnType<typeof clientStartOptions> = {
    bundledPath: bundledServerPath(host.extensionPath, host.platform),
  };
  if (settings.serverPath) opts.serverPath = expandPath(settings.serverPath, host);
  if (settings.dataDir) opts.dataDir = expandPath(settings.dataDir, host);
  if (host.workspaceFolder) {
    opts.workspaceFolders = [host.workspaceFolder];
    opts.cwd = host.workspaceFolder;
  }
  return opts;
}

export interface NewAgentOptions {
  agentId?: string;
  provider?: string;
  model?: string;
  permissionMode?: PermissionMode;
  /** For the `scripted` provider (tests, demos). */
  script?: NonNullable<AgentConfig["model"]>["script"];
  systemPrompt?: string;
  metadata?: Record<string, unknown>;
  /** Passed through to `agent/create` (tests, demos). */
  mcpServers?: AgentConfig["mcpServers"];
  context?: AgentConfig["context"];
}

/** The `agent/create` params for a new agent from settings, overridden by `opts`. */
export function agentConfig(settings: KodeSettings, workDir: string | undefined, opts: NewAgentOptions = {}): AgentConfig {
  const provider = opts.provider ?? settings.defaultProvider;
  const model = opts.model ?? settings.defaultModel;
  const cfg: AgentConfig = {
    permission: { mode: opts.permissionMode ?? settings.permissionMode },
    metadata: { client: "vscode", ...(opts.metadata ?? {}) },
  };
  if (opts.agentId) cfg.agentId = opts.agentId;
  if (provider) {
    if (!PROVIDERS.has(provider)) throw new Error(`Unknown provider "${provider}" (anthropic, openai, scripted, echo)`);
    cfg.model = { provider: provider as Provider };
    if (model) cfg.model.model = model;
    if (opts.script) cfg.model.script = opts.script;
  }
  if (workDir) cfg.sandbox = { workDir };
  if (opts.systemPrompt) cfg.systemPrompt = opts.systemPrompt;
  if (opts.mcpServers) cfg.mcpServers = opts.mcpServers;
  if (opts.context) cfg.context = opts.context;
  return cfg;
}

/** A readable, valid agent id: `chat-YYYYMMDD-HHMMSS-xxxx`. */
export function newAgentId(now: Date = new Date(), rand: () => number = Math.random): string {
  const p = (n: number) => String(n).padStart(2, "0");
  const stamp = `${now.getFullYear()}${p(now.getMonth() + 1)}${p(now.getDate())}-${p(now.getHours())}${p(now.getMinutes())}${p(now.getSeconds())}`;
  const suffix = Math.floor(rand() * 0x10000)
    .toString(16)
    .padStart(4, "0");
  return `chat-${stamp}-${suffix}`;
}

export const AGENT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Where the extension runs, for advice about `kode.serverPath`. */
export interface WindowKind {
  /** `vscode.env.remoteName` (`ssh-remote`, `wsl`, `codespaces`, ...), if any. */
  remoteName?: string;
  /** `vscode.env.uiKind === UIKind.Web` (code-server, vscode.dev, Codespaces in a browser). */
  web?: boolean;
}

export interface StartErrorHelp {
  message: string;
  /** Offer a button that opens the settings at `kode.serverPath` (Remote settings when `remote`). */
  openSettings: boolean;
  remote: boolean;
}

/**
 * A user's message for a server that could not be found (the library's
 * `KodeServerNotFoundError`, recognised by name so a second copy of the library works
 * too): it names the `kode.serverPath` setting and where to put it. In a remote window
 * (Remote-SSH, WSL, Codespaces, code-server) the server runs on the remote machine, and
 * `kode.serverPath` is a machine setting: it belongs in the Remote settings there.
 * Undefined for other errors.
 */
export function startErrorHelp(e: unknown, win: WindowKind = {}): StartErrorHelp | undefined {
  if (!(e instanceof Error) || e.name !== "KodeServerNotFoundError") return undefined;
  const err = e as Error & { reason?: string; tried?: string[]; path?: string };
  const remote = Boolean(win.remoteName) || Boolean(win.web);
  const machine = remote
    ? `the ${win.remoteName ? `remote machine (${win.remoteName})` : "machine that runs the extension host"}`
    : "this machine";
  const where = remote
    ? 'in the Remote settings ("Preferences: Open Remote Settings"): it is a machine setting, so a value in your local User settings does not apply in a remote window'
    : 'in your User settings ("Preferences: Open User Settings")';
  if (err.reason === "bad_server_path") {
    return {
      message:
        `The setting "kode.serverPath" is ${err.path ?? "set"}, which is not an executable file on ${machine}. ` +
        `Fix it ${where}, or clear it to let the extension find the server.`,
      openSettings: true,
      remote,
    };
  }
  const tried = err.tried?.length ? ` (tried: ${err.tried.join(", ")})` : "";
  return {
    message:
      `The kode-rpc server was not found on ${machine}${tried}. Install it there (pip install kode-rpc) ` +
      `or set "kode.serverPath" to the path of a kode-rpc executable ${where}.`,
    openSettings: true,
    remote,
  };
}
