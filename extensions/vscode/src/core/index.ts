/** Everything that runs without `vscode` (the tests import the bundle of this file: out/core.mjs). */
export * from "./chatModel.js";
export * from "./approvals.js";
export * from "./session.js";
export * from "./status.js";
export * from "./models.js";
export * from "./titles.js";
export * from "./config.js";
export * from "./events.js";
export * from "./chatView.js";
export * from "./agentsView.js";
export * from "../webview/protocol.js";
export * from "../webview/html.js";
export * from "../webview/markdown.js";
export * from "./diff.js";
