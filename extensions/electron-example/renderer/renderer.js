// The chat page. Talks to the main process only through `window.kode` (src/preload.cjs).
// DOM text only (textContent), never innerHTML: model output and diffs are untrusted.
const $ = (id) => document.getElementById(id);
const log = $("log");
let agentId;
let bubble; // the assistant message being streamed
const prompts = new Map(); // approvalId -> element

function line(cls, text) {
  const el = document.createElement("div");
  el.className = cls;
  el.textContent = text;
  log.append(el);
  log.scrollTop = log.scrollHeight;
  return el;
}

function showState({ state, error }) {
  $("state").textContent = `server: ${state}${error ? ` (${error})` : ""}`;
}

function showApproval(p) {
  if (prompts.has(p.approvalId)) return;
  const box = document.createElement("div");
  box.className = "approval";
  const title = document.createElement("div");
  title.textContent = `${p.agentId} wants to run ${p.title}`;
  const detail = document.createElement("pre");
  detail.textContent =
    p.subject.type === "file_change" ? p.subject.diff
    : p.subject.type === "command" ? `$ ${p.subject.command}\n(in ${p.subject.cwd})`
    : JSON.stringify(p.call.input, null, 2);
  const answer = (decision) => () => {
    kode.decide(p.approvalId, decision).catch((e) => line("note", String(e)));
    box.remove();
    prompts.delete(p.approvalId);
  };
  const allow = document.createElement("button");
  allow.textContent = "Allow";
  allow.onclick = answer("allow");
  const deny = document.createElement("button");
  deny.textContent = "Deny";
  deny.onclick = answer("deny");
  const until = document.createElement("span");
  until.className = "note";
  until.textContent = ` denied automatically at ${new Date(p.expiresAt).toLocaleTimeString()}`;
  box.append(title, detail, allow, deny, until);
  prompts.set(p.approvalId, box);
  log.append(box);
  log.scrollTop = log.scrollHeight;
}

kode.onServerState(showState);
kode.onApproval(showApproval);
kode.onEvent((e) => {
  if (e.agentId !== agentId) return;
  const ev = e.event;
  switch (ev.type) {
    case "text_chunk":
      bubble ??= line("assistant", "");
      bubble.textContent += ev.delta;
      log.scrollTop = log.scrollHeight;
      break;
    case "tool:start":
      bubble = undefined;
      line("note", `tool ${ev.call.name}: ${ev.call.inputPreview ?? ""}`);
      break;
    case "tool:end":
      line("note", `tool ${ev.call.name}: ${ev.call.state}`);
      break;
    case "permission_decided": // answered here, by the timeout, or withdrawn: close the prompt
      prompts.get(ev.approvalId)?.remove();
      prompts.delete(ev.approvalId);
      line("note", `${ev.decision} (${ev.decidedBy})`);
      break;
    case "error":
      line("note", `${ev.severity}: ${ev.message}`);
      break;
    case "done":
      bubble = undefined;
      line("note", `[${ev.reason}]`);
      break;
  }
});

async function newAgent(config) {
  try {
    const info = await kode.createAgent(config);
    agentId = info.agentId;
    log.replaceChildren();
    $("agent").textContent = `${info.agentId} (${info.model.provider}) in ${info.workDir}`;
    for (const id of ["input", "send", "stop"]) $(id).disabled = false;
    $("input").focus();
  } catch (e) {
    line("note", String(e));
  }
}

$("new-echo").onclick = () => newAgent({ model: { provider: "echo" } });
$("new-demo").onclick = () =>
  newAgent({
    model: {
      provider: "scripted",
      script: [
        {
          text: "I will write hello.txt.",
          toolCalls: [{ name: "fs_write", input: { path: "hello.txt", content: "hello from kode-rpc\n" } }],
        },
        { text: "Done." },
      ],
    },
  });

$("form").onsubmit = async (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || !agentId) return;
  $("input").value = "";
  bubble = undefined;
  line("user", text);
  try {
    await kode.send(agentId, text);
  } catch (e) {
    line("note", String(e));
  }
};
$("stop").onclick = () => agentId && kode.interrupt(agentId);

// A page that (re)loads after the server started missed the pushes: ask.
kode.status().then((s) => {
  showState(s);
  for (const p of s.pendingApprovals) showApproval(p);
});
