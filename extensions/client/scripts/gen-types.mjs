#!/usr/bin/env node
// Generates src/protocol.ts from the server's JSON Schema (`kode-rpc schema`): the message
// types, the `Methods` map and `METHODS` table, and the `ErrorCodes` table (from the schema's
// `errors`, i.e. the server's one definition of its error codes).
//
//   node scripts/gen-types.mjs           write src/protocol.ts
//   node scripts/gen-types.mjs --check   regenerate into a temp file and exit 1 when it
//                                        differs from the committed src/protocol.ts (CI drift check)
//
// The schema command is env KODE_RPC_SCHEMA_CMD (split on whitespace, quotes honoured),
// default `python -m kode_rpc schema`; when the default fails, `python3 -m kode_rpc schema`
// is tried. An explicit KODE_RPC_SCHEMA_CMD is not second-guessed.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { compile } from "json-schema-to-typescript";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const target = join(root, "src", "protocol.ts");
const check = process.argv.includes("--check");

function splitCommand(cmd) {
  const out = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(cmd)) !== null) out.push(m[1] ?? m[2] ?? m[3]);
  return out;
}

function runSchema() {
  const explicit = process.env.KODE_RPC_SCHEMA_CMD;
  const candidates = explicit
    ? [explicit]
    : ["python -m kode_rpc schema", "python3 -m kode_rpc schema"];
  const failures = [];
  for (const cmd of candidates) {
    const [exe, ...args] = splitCommand(cmd);
    const r = spawnSync(exe, args, { encoding: "utf8", maxBuffer: 64 << 20, windowsHide: true });
    if (r.error) {
      failures.push(`${cmd}: ${r.error.message}`);
      continue;
    }
    if (r.status !== 0) {
      failures.push(`${cmd}: exit ${r.status}: ${(r.stderr || "").trim().split("\n").slice(-3).join(" | ")}`);
      continue;
    }
    try {
      return JSON.parse(r.stdout);
    } catch (e) {
      failures.push(`${cmd}: output is not JSON (${e.message})`);
    }
  }
  console.error("gen-types: could not get the schema:\n  " + failures.join("\n  "));
  console.error("Install the Python package (pip install -e .) or set KODE_RPC_SCHEMA_CMD.");
  process.exit(2);
}

/** pydantic titles every property ("Agentid"); json-schema-to-typescript would turn each
 * into a named type. Keep titles only on $defs roots, drop `discriminator` (the oneOf is
 * enough), and close objects that list their properties (open maps such as `metadata`,
 * which declare `additionalProperties: true`, stay open). */
function clean(node, isDefRoot) {
  if (Array.isArray(node)) return node.map((n) => clean(n, false));
  if (node === null || typeof node !== "object") return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === "title" && !isDefRoot) continue;
    if (k === "discriminator") continue;
    if (k === "properties") {
      out[k] = Object.fromEntries(Object.entries(v).map(([p, s]) => [p, clean(s, false)]));
    } else if (k === "$defs") {
      continue; // handled by the caller
    } else {
      out[k] = clean(v, false);
    }
  }
  if (out.properties && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

function refName(s) {
  if (s && typeof s.$ref === "string") return s.$ref.replace("#/$defs/", "");
  if (s && s.type === "null") return "null";
  throw new Error("unexpected method schema " + JSON.stringify(s));
}

/** The `ErrorCodes` table from the schema's `errors` (the server's one definition of its
 * error codes, kode_rpc/protocol/errors.py): one constant per error, named by `name`, with
 * `meaning` and the `data.reason` values as its doc comment. */
function errorCodes(errors) {
  if (!Array.isArray(errors) || errors.length === 0) {
    console.error("gen-types: the schema has no `errors` list: the server is too old for this client.");
    process.exit(2);
  }
  const doc = (text) => text.replace(/\*\//g, "*\\/");
  const seen = new Set();
  const out = [];
  out.push("/**");
  out.push(` * Error codes of kode-rpc protocol v${schema["x-protocolVersion"]} (\`code\` of a JSON-RPC error response); every error`);
  out.push(" * carries `data.reason`. `-32001` and `-32002` carry kode-rpc's meanings (unavailable, not");
  out.push(" * found), NOT the names LSP gives those numbers (UnknownErrorCode, ServerNotInitialized):");
  out.push(" * `vscode-jsonrpc`'s own `ErrorCodes` table uses the LSP names; use this one with kode-rpc.");
  out.push(" */");
  out.push("export const ErrorCodes = {");
  for (const e of errors) {
    if (!/^[A-Z][A-Za-z0-9]*$/.test(e?.name ?? "") || !Number.isInteger(e?.code) || seen.has(e.name)) {
      throw new Error("gen-types: bad entry in the schema's errors: " + JSON.stringify(e));
    }
    seen.add(e.name);
    const reasons = (e.reasons ?? []).map((r) => "`" + r + "`").join(", ");
    const text = doc(String(e.meaning ?? "").replace(/\s+/g, " ").trim());
    const comment = `${text.charAt(0).toUpperCase() + text.slice(1)}.${reasons ? ` \`data.reason\`: ${doc(reasons)}.` : ""}`;
    if (comment.length + 9 <= 100) {
      out.push(`  /** ${comment} */`);
    } else {
      // Wrapped at 100 columns, on spaces.
      out.push("  /**");
      let line = "";
      for (const word of comment.split(" ")) {
        if (line && line.length + 1 + word.length + 5 > 100) {
          out.push(`   * ${line}`);
          line = word;
        } else {
          line = line ? `${line} ${word}` : word;
        }
      }
      if (line) out.push(`   * ${line}`);
      out.push("   */");
    }
    out.push(`  ${e.name}: ${e.code},`);
  }
  out.push("} as const;");
  out.push("");
  out.push("/** One of the protocol's error codes. */");
  out.push("export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];");
  out.push("/** The name of an error code (a key of `ErrorCodes`). */");
  out.push("export type ErrorName = keyof typeof ErrorCodes;");
  out.push("");
  return out;
}

const schema = runSchema();
const defs = schema.$defs ?? {};
// Variants of a discriminated union always carry the tag on the wire (the server dumps
// defaults), so make it required: `switch (ev.event.type)` then narrows cleanly.
const tagged = new Map(); // def name -> discriminator property
(function collect(node) {
  if (Array.isArray(node)) return node.forEach(collect);
  if (node === null || typeof node !== "object") return;
  if (node.discriminator?.mapping) {
    for (const ref of Object.values(node.discriminator.mapping)) {
      tagged.set(ref.replace("#/$defs/", ""), node.discriminator.propertyName);
    }
  }
  Object.values(node).forEach(collect);
})(schema);
const cleanDefs = {};
for (const name of Object.keys(defs).sort()) {
  const def = { ...clean(defs[name], true), title: name };
  const tag = tagged.get(name);
  if (tag && def.properties?.[tag] && !(def.required ?? []).includes(tag)) {
    def.required = [tag, ...(def.required ?? [])];
  }
  cleanDefs[name] = def;
}

const banner = `/* eslint-disable */
/**
 * kode-rpc protocol v${schema["x-protocolVersion"]} types.
 *
 * GENERATED by scripts/gen-types.mjs from \`kode-rpc schema\`. Do not edit by hand:
 * run \`npm run gen-types\` (CI runs \`npm run check-types\` to catch drift).
 */`;

let ts = await compile(
  { $id: "KodeRpcProtocol", title: "KodeRpcProtocol", $defs: cleanDefs },
  "KodeRpcProtocol",
  {
    bannerComment: banner,
    unreachableDefinitions: true,
    additionalProperties: true,
    strictIndexSignatures: false,
    format: true,
    style: { printWidth: 100, singleQuote: false },
  },
);
// The synthetic root carries no information.
ts = ts.replace(/export interface KodeRpcProtocol \{[^}]*\}\n\n?/, "");
// Drop json-schema-to-typescript's "referenced by ... via the definition" boilerplate.
ts = ts
  .replace(/\/\*\*\n \* This interface was referenced by `KodeRpcProtocol`'s JSON-Schema\n \* via the `definition` "[^"]+"\.\n \*\/\n/g, "")
  .replace(/ \*\n \* This interface was referenced by `KodeRpcProtocol`'s JSON-Schema\n \* via the `definition` "[^"]+"\.\n/g, "")
  .replace(/\n([}A-Za-z;"|].*)\n(\/\*\*|export )/g, "\n$1\n\n$2")
  .replace(/\n\n\n+/g, "\n\n");

const methods = schema.methods ?? {};
const lines = [];
lines.push("");
lines.push(`/** Protocol version this file was generated for (\`initialize.protocolVersion\`). */`);
lines.push(`export const PROTOCOL_VERSION = ${JSON.stringify(schema["x-protocolVersion"])} as const;`);
lines.push("");
lines.push("/** Every method of the protocol: params and result types, direction and kind. */");
lines.push("export interface Methods {");
for (const [name, m] of Object.entries(methods)) {
  if (m.summary) lines.push(`  /** ${m.summary.replace(/\*\//g, "*\\/")} */`);
  lines.push(`  ${JSON.stringify(name)}: {`);
  lines.push(`    params: ${refName(m.params)};`);
  lines.push(`    result: ${refName(m.result)};`);
  lines.push(`    direction: ${JSON.stringify(m.direction)};`);
  lines.push(`    kind: ${JSON.stringify(m.kind)};`);
  lines.push("  };");
}
lines.push("}");
lines.push("");
lines.push("export type MethodName = keyof Methods;");
lines.push("/** Requests the client sends. */");
const nameType = (dir, kind) =>
  `{\n  [K in MethodName]: Methods[K] extends { direction: "${dir}"; kind: "${kind}" } ? K : never;\n}[MethodName];`;
lines.push("export type ClientRequestName = " + nameType("client->server", "request"));
lines.push("/** Notifications the client sends. */");
lines.push("export type ClientNotificationName = " + nameType("client->server", "notification"));
lines.push("/** Requests the server sends. */");
lines.push("export type ServerRequestName = " + nameType("server->client", "request"));
lines.push("/** Notifications the server sends. */");
lines.push("export type ServerNotificationName = " + nameType("server->client", "notification"));
lines.push("export type ParamsOf<M extends MethodName> = Methods[M][\"params\"];");
lines.push("export type ResultOf<M extends MethodName> = Methods[M][\"result\"];");
lines.push("");
lines.push("/** Runtime table of the methods (direction and kind), in the schema's order. */");
lines.push("export const METHODS = {");
for (const [name, m] of Object.entries(methods)) {
  lines.push(`  ${JSON.stringify(name)}: { direction: ${JSON.stringify(m.direction)}, kind: ${JSON.stringify(m.kind)} },`);
}
lines.push("} as const satisfies {");
lines.push('  [K in MethodName]: { direction: Methods[K]["direction"]; kind: Methods[K]["kind"] };');
lines.push("};");
lines.push("");
lines.push(...errorCodes(schema.errors));

const output = ts.trimEnd() + "\n" + lines.join("\n");

if (!check) {
  writeFileSync(target, output);
  console.log(`gen-types: wrote ${target} (${Object.keys(defs).length} types, ${Object.keys(methods).length} methods)`);
} else {
  let committed = "";
  try {
    committed = readFileSync(target, "utf8");
  } catch {
    /* missing counts as drift */
  }
  if (committed.replace(/\r\n/g, "\n") === output) {
    console.log("check-types: src/protocol.ts is up to date with `kode-rpc schema`.");
  } else {
    const dir = mkdtempSync(join(tmpdir(), "kode-gen-types-"));
    const fresh = join(dir, "protocol.ts");
    writeFileSync(fresh, output);
    const d = spawnSync("diff", ["-u", target, fresh], { encoding: "utf8" });
    let diff = d.error ? "" : d.stdout;
    if (!diff) {
      // No `diff` (e.g. Windows): show the first line that differs.
      const a = committed.replace(/\r\n/g, "\n").split("\n");
      const b = output.split("\n");
      let i = 0;
      while (i < a.length && i < b.length && a[i] === b[i]) i++;
      diff = `first difference at line ${i + 1}:\n- ${a[i] ?? "(end of file)"}\n+ ${b[i] ?? "(end of file)"}`;
    }
    const shown = diff.split("\n").slice(0, 80).join("\n");
    console.error(shown + (diff.split("\n").length > 80 ? "\n... (diff truncated)" : ""));
    console.error(
      "\ncheck-types: src/protocol.ts is out of date with the server's schema.\n" +
        "Run `npm run gen-types` in extensions/client and commit src/protocol.ts.",
    );
    rmSync(dir, { recursive: true, force: true });
    process.exit(1);
  }
}
