// Builds with esbuild:
//   dist/extension.js  the extension (CommonJS, Node, `vscode` external; the ESM client library is bundled in)
//   dist/webview.js    the chat webview script (browser IIFE, markdown-it bundled in)
//   out/core.mjs       with --tests: every vscode-free module as one ESM bundle for node --test
import { build } from "esbuild";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tests = process.argv.includes("--tests");
const production = process.argv.includes("--production") || process.env.NODE_ENV === "production";
const started = Date.now();

const common = {
  bundle: true,
  absWorkingDir: root,
  logLevel: "warning",
  sourcemap: production ? false : "linked",
  legalComments: "none",
  target: "es2022",
};

await Promise.all([
  build({
    ...common,
    entryPoints: ["src/extension.ts"],
    outfile: "dist/extension.js",
    platform: "node",
    format: "cjs",
    external: ["vscode"],
    minify: production,
  }),
  build({
    ...common,
    entryPoints: ["src/webview/main.ts"],
    outfile: "dist/webview.js",
    platform: "browser",
    format: "iife",
    minify: true,
    sourcemap: false,
  }),
  tests &&
    build({
      ...common,
      entryPoints: ["src/core/index.ts"],
      outfile: "out/core.mjs",
      platform: "node",
      format: "esm",
      sourcemap: "inline",
      // The client library stays a real import: tests share it (and its process hooks) with the bundle.
      packages: "external",
    }),
].filter(Boolean));

if (tests) {
  mkdirSync(join(root, "out"), { recursive: true });
  writeFileSync(join(root, "out", "package.json"), '{ "type": "module" }\n');
}
console.log(`esbuild: dist/extension.js, dist/webview.js${tests ? ", out/core.mjs" : ""} in ${Date.now() - started} ms`);
