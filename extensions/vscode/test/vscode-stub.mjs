// A minimal in-memory stand-in for the `vscode` module: enough of the API that
// dist/extension.js uses to activate it under plain Node and drive its commands.
// It records what the extension did (panels, messages, status bar, notifications).
import { createRequire } from "node:module";
import Module from "node:module";
import { join } from "node:path";

class EventEmitter {
  listeners = new Set();
  event = (fn) => {
    this.listeners.add(fn);
    return { dispose: () => this.listeners.delete(fn) };
  };
  fire(v) {
    for (const l of [...this.listeners]) l(v);
  }
  dispose() {
    this.listeners.clear();
  }
}

class Uri {
  constructor(fsPath) {
    this.fsPath = fsPath;
    this.path = fsPath;
    this.scheme = "file";
  }
  static file(p) {
    return new Uri(p);
  }
  static joinPath(base, ...parts) {
    return new Uri(join(base.fsPath, ...parts));
  }
  toString() {
    return `file://${this.fsPath}`;
  }
}

class TreeItem {
  constructor(label, collapsibleState) {
    this.label = label;
    this.collapsibleState = collapsibleState;
  }
}

class ThemeIcon {
  constructor(id) {
    this.id = id;
  }
}

/** Creates a fresh stub; `install()` makes `require("vscode")` return it. */
export function createVscodeStub({ workspaceFolder, config = {}, remoteName, web = false } = {}) {
  const rec = {
    commands: new Map(),
    panels: [],
    statusItems: [],
    treeViews: [],
    output: { lines: [], shown: 0 },
    messages: [], // {kind, message, items}
    config: { ...config },
    /** Answers for show*Message: (kind, message, items) => item | undefined */
    answer: () => undefined,
    quickPick: undefined,
    inputBox: undefined,
    activeTextEditor: undefined,
  };
  const configEmitter = new EventEmitter();

  const showMessage = (kind) => async (message, ...items) => {
    const opts = items[0] && typeof items[0] === "object" && !Array.isArray(items[0]) ? items.shift() : undefined;
    rec.messages.push({ kind, message, items, opts });
    return rec.answer(kind, message, items);
  };

  const vscode = {
    Uri,
    EventEmitter,
    TreeItem,
    ThemeIcon,
    ViewColumn: { Active: -1, Beside: -2, One: 1 },
    StatusBarAlignment: { Left: 1, Right: 2 },
    TreeItemCollapsibleState: { None: 0, Collapsed: 1, Expanded: 2 },
    ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
    UIKind: { Desktop: 1, Web: 2 },
    env: { remoteName, uiKind: web ? 2 : 1 },
    window: {
      createOutputChannel(name, opts) {
        const push = (level) => (m) => rec.output.lines.push(`[${level}] ${m}`);
        return {
          name,
          log: opts?.log,
          info: push("info"),
          warn: push("warn"),
          error: push("error"),
          debug: push("debug"),
          trace: push("trace"),
          append: push("raw"),
          appendLine: push("raw"),
          show: () => rec.output.shown++,
          dispose() {},
        };
      },
      createWebviewPanel(viewType, title, showOptions, options) {
        const receive = new EventEmitter();
        const viewState = new EventEmitter();
        const disposed = new EventEmitter();
        const panel = {
          viewType,
          title,
          showOptions,
          options,
          visible: true,
          active: true,
          disposed: false,
          posted: [],
          webview: {
            html: "",
            cspSource: "https://stub.vscode-cdn.net",
            asWebviewUri: (u) => ({ toString: () => `https://stub.vscode-cdn.net${u.fsPath}` }),
            postMessage: async (m) => {
              // JSON round trip, as the real postMessage structured-clones.
              panel.posted.push(JSON.parse(JSON.stringify(m)));
              return true;
            },
            onDidReceiveMessage: receive.event,
          },
          /** Test helper: a message from the webview script. */
          receive: (m) => receive.fire(m),
          /** Test helper: hide/show. */
          setVisible(v) {
            panel.visible = v;
            panel.active = v;
            viewState.fire({ webviewPanel: panel });
          },
          reveal() {
            panel.setVisible(true);
          },
          onDidChangeViewState: viewState.event,
          onDidDispose: disposed.event,
          dispose() {
            if (panel.disposed) return;
            panel.disposed = true;
            disposed.fire();
          },
        };
        rec.panels.push(panel);
        return panel;
      },
      createTreeView(id, options) {
        const tv = { id, options, dispose() {} };
        rec.treeViews.push(tv);
        return tv;
      },
      createStatusBarItem(id, alignment, priority) {
        const item = { id, alignment, priority, text: "", tooltip: "", visible: false, show() { item.visible = true; }, hide() { item.visible = false; }, dispose() {} };
        rec.statusItems.push(item);
        return item;
      },
      showInformationMessage: showMessage("info"),
      showWarningMessage: showMessage("warning"),
      showErrorMessage: showMessage("error"),
      showQuickPick: async (items) => (typeof rec.quickPick === "function" ? rec.quickPick(await items) : rec.quickPick),
      showInputBox: async (opts) => (typeof rec.inputBox === "function" ? rec.inputBox(opts) : rec.inputBox),
      withProgress: async (_opts, task) => task({ report() {} }, { isCancellationRequested: false }),
      get activeTextEditor() {
        return rec.activeTextEditor;
      },
    },
    workspace: {
      get workspaceFolders() {
        return workspaceFolder ? [{ uri: Uri.file(workspaceFolder), name: "ws", index: 0 }] : undefined;
      },
      getWorkspaceFolder: () => (workspaceFolder ? { uri: Uri.file(workspaceFolder), name: "ws", index: 0 } : undefined),
      getConfiguration: (section) => ({
        get: (key, dflt) => {
          const v = rec.config[`${section}.${key}`];
          return v === undefined ? dflt : v;
        },
      }),
      onDidChangeConfiguration: configEmitter.event,
      registerTextDocumentContentProvider(scheme, provider) {
        rec.contentProviders = { ...(rec.contentProviders ?? {}), [scheme]: provider };
        return { dispose() {} };
      },
    },
    commands: {
      registerCommand(id, fn) {
        if (rec.commands.has(id)) throw new Error(`command ${id} registered twice`);
        rec.commands.set(id, fn);
        return { dispose: () => rec.commands.delete(id) };
      },
      async executeCommand(id, ...args) {
        const fn = rec.commands.get(id);
        if (!fn) throw new Error(`command ${id} not found`);
        return fn(...args);
      },
    },
  };

  return {
    vscode,
    rec,
    /** Routes `require("vscode")` to this stub; returns an uninstall function. */
    install() {
      const orig = Module._load;
      Module._load = function (request, parent, isMain) {
        if (request === "vscode") return vscode;
        return orig.call(this, request, parent, isMain);
      };
      return () => {
        Module._load = orig;
      };
    },
    /** Loads the built extension (fresh copy) with the stub in place. */
    loadExtension(path) {
      const require = createRequire(import.meta.url);
      delete require.cache[require.resolve(path)];
      return require(path);
    },
  };
}
