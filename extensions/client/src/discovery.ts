import { execFile } from "node:child_process";
import { accessSync, constants, statSync } from "node:fs";
import { delimiter, isAbsolute, join, resolve } from "node:path";
import { KodeServerNotFoundError } from "./errors.js";

/** How the server will be started, and which discovery step chose it. */
export interface ServerCommand {
  command: string;
  args: string[];
  source: "command" | "serverPath" | "bundledPath" | "path" | "python";
}

export interface DiscoveryOptions {
  /** Explicit command; used verbatim with `args` (no discovery, no `serve` appended). */
  command?: string;
  args?: string[];
  /** Path of a `kode-rpc` executable chosen by the user (e.g. a setting). Must exist. */
  serverPath?: string;
  /** Path of a bundled (frozen) `kode-rpc` binary shipped with the app; skipped when missing. */
  bundledPath?: string;
  /** Told when a configured `bundledPath` is skipped (missing or not executable). */
  warn?: (message: string) => void;
  /** Extra arguments after `serve` for the discovered commands, e.g. `["--log-level", "debug"]`. */
  serverArgs?: string[];
  /** Environment used to search PATH (defaults to `process.env`). */
  env?: NodeJS.ProcessEnv;
  /** Python interpreters to try, in order (default `["python3", "python"]`, plus `py -3` first on Windows). */
  pythonCandidates?: string[][];
}

function isExecutableFile(p: string): boolean {
  try {
    if (!statSync(p).isFile()) return false;
    if (process.platform === "win32") return true;
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Finds `name` on PATH (honouring PATHEXT on Windows); returns the absolute path or undefined. */
export function which(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const pathVar = env.PATH ?? env.Path ?? "";
  const exts =
    process.platform === "win32"
      ? ["", ...(env.PATHEXT ?? ".COM;.EXE;.BAT;.CMD").split(";").filter(Boolean)]
      : [""];
  for (const dir of pathVar.split(delimiter)) {
    if (!dir) continue;
    for (const ext of exts) {
      const candidate = join(dir, name + ext);
      if (isExecutableFile(candidate)) return candidate;
    }
  }
  return undefined;
}

function canImportKodeRpc(exe: string, pre: string[], env: NodeJS.ProcessEnv): Promise<boolean> {
  return new Promise((res) => {
    execFile(
      exe,
      [...pre, "-c", "import kode_rpc"],
      { env, timeout: 15_000, windowsHide: true },
      (err) => res(!err),
    );
  });
}

/**
 * Resolves the server command. The order is:
 *
 * 1. `command` (+ `args`): used verbatim.
 * 2. `serverPath`: an explicit path to a `kode-rpc` executable; an error if it does not exist.
 * 3. `bundledPath`: the frozen binary bundled with an app (VS Code extension, Electron);
 *    skipped when the file is not there.
 * 4. `kode-rpc` found on PATH.
 * 5. `python3 -m kode_rpc`, then `python -m kode_rpc` (on Windows `py -3 -m kode_rpc` first):
 *    the first interpreter on PATH that can `import kode_rpc`.
 *
 * Steps 2 to 5 run `<exe> serve [...serverArgs]`.
 */
export async function resolveServerCommand(opts: DiscoveryOptions = {}): Promise<ServerCommand> {
  const env = opts.env ?? process.env;
  const serveArgs = ["serve", ...(opts.serverArgs ?? [])];
  if (opts.command) {
    return { command: opts.command, args: [...(opts.args ?? [])], source: "command" };
  }
  if (opts.serverPath) {
    const p = isAbsolute(opts.serverPath) ? opts.serverPath : resolve(opts.serverPath);
    if (!isExecutableFile(p)) {
      throw new KodeServerNotFoundError(`kode-rpc: serverPath ${p} is not an executable file`, "bad_server_path", [p], p);
    }
    return { command: p, args: serveArgs, source: "serverPath" };
  }
  if (opts.bundledPath) {
    if (isExecutableFile(opts.bundledPath)) {
      return { command: resolve(opts.bundledPath), args: serveArgs, source: "bundledPath" };
    }
    // A packaging mistake must not go unnoticed while another server quietly runs instead.
    opts.warn?.(`kode-rpc: bundledPath ${opts.bundledPath} is missing or not executable; trying PATH and Python`);
  }
  const onPath = which("kode-rpc", env);
  if (onPath) return { command: onPath, args: serveArgs, source: "path" };

  const candidates =
    opts.pythonCandidates ??
    (process.platform === "win32"
      ? [["py", "-3"], ["python3"], ["python"]]
      : [["python3"], ["python"]]);
  const tried: string[] = [];
  for (const [exe, ...pre] of candidates) {
    if (!exe) continue;
    const found = which(exe, env);
    tried.push(pre.length ? `${exe} ${pre.join(" ")}` : exe);
    if (!found) continue;
    if (await canImportKodeRpc(found, pre, env)) {
      return { command: found, args: [...pre, "-m", "kode_rpc", ...serveArgs], source: "python" };
    }
  }
  const triedAll = [
    opts.bundledPath ? `bundledPath ${opts.bundledPath}` : undefined,
    "kode-rpc on PATH",
    ...tried.map((t) => `${t} -m kode_rpc`),
  ].filter((t): t is string => Boolean(t));
  throw new KodeServerNotFoundError(
    `kode-rpc: server not found. Tried: ${triedAll.join(", ")}. Install it (pip install kode-rpc) or pass \`command\`/\`serverPath\`.`,
    "not_found",
    triedAll,
  );
}
