// Approvals from a scripted fs_write in approval mode: routed inline (view visible) or
// to a notification (view hidden); the decision answers the server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  ApprovalBroker,
  approvalMessage,
  choiceFromLabel,
  toDecision,
  CHOICE_LABELS,
} from "../out/core.mjs";
import { makeSession, sendAndWait, tempEnv, waitUntil } from "./helpers.mjs";

let env;
before(() => {
  env = tempEnv();
});
after(() => env.cleanup());

const writeScript = (path, content) => [
  { text: `Writing ${path}.`, toolCalls: [{ name: "fs_write", input: { path, content } }] },
  { text: "Finished." },
];

test("visible view: the approval is inline (no notification); Allow writes the file", async (t) => {
  const { session, host } = makeSession(env, { visible: true });
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "approval",
    script: writeScript("inline.txt", "allowed inline"),
  });
  const settled = [];
  session.approvals.onDidSettle((s) => settled.push(s));
  const routed = [];
  session.approvals.onDidRequest((p) => routed.push(p));

  const client = await session.start();
  const done = client.waitForEvent(a.agentId, (e) => e.event.type === "done", { timeoutMs: 20_000 });
  await session.send(a.agentId, "write");
  // The card shows the pending approval; the broker holds the approval/request.
  const card = await waitUntil(session, () => a.model.pendingApprovals()[0], 20_000, "pending approval card");
  await waitUntil(session, () => session.approvals.isPending(card.approval.approvalId), 5_000, "broker pending");
  assert.equal(routed.length, 1);
  assert.equal(routed[0].route, "inline");
  assert.equal(routed[0].request.subject.type, "file_change");
  assert.match(routed[0].request.subject.diff, /\+allowed inline/);
  assert.equal(host.notified.length, 0, "no notification when the view is visible");
  assert.match(session.status(a.agentId).text, /awaiting approval/);
  assert.equal(card.state, "APPROVAL_REQUIRED");
  // The card carries what is asked (the diff), from the approval/request.
  assert.equal(card.approval.subject.type, "file_change");
  assert.match(card.approval.subject.diff, /\+allowed inline/);

  // The inline Allow button.
  assert.equal(await session.decide(a.agentId, card.approval.approvalId, "allow", "inline"), true);
  const d = await done;
  assert.equal(d.event.reason, "completed");
  assert.equal(readFileSync(join(env.work, "inline.txt"), "utf8"), "allowed inline");
  assert.equal(card.state, "COMPLETED");
  assert.equal(card.approval.status, "allowed");
  assert.equal(card.approval.decidedBy, "client");
  assert.equal(card.approval.subject.type, "file_change", "kept after the decision");
  assert.deepEqual(
    settled.map((s) => [s.route, s.outcome, s.via]),
    [["inline", "allow", "inline"]],
  );
  // A second answer to the same approval is refused.
  assert.equal(await session.decide(a.agentId, card.approval.approvalId, "deny"), false);
});

test("hidden view: a notification asks; Deny leaves the file untouched", async (t) => {
  const { session, host } = makeSession(env, { visible: false, notify: async () => "deny" });
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "approval",
    script: writeScript("denied.txt", "nope"),
  });
  const settled = [];
  session.approvals.onDidSettle((s) => settled.push(s));
  const r = await sendAndWait(session, a.agentId, "write");
  assert.equal(r.done.event.reason, "completed");
  assert.equal(host.notified.length, 1);
  const req = host.notified[0];
  assert.equal(req.agentId, a.agentId);
  assert.equal(req.call.name, "fs_write");
  assert.match(approvalMessage(req), new RegExp(`Kode agent "${a.agentId}" wants to change .*denied\\.txt \\(fs_write\\)`));
  assert.equal(existsSync(join(env.work, "denied.txt")), false, "denied: the file is not written");
  const card = a.model.tools()[0];
  assert.equal(card.state, "DENIED");
  assert.equal(card.approval.status, "denied");
  assert.deepEqual(
    settled.map((s) => [s.route, s.outcome, s.via]),
    [["notification", "deny", "notification"]],
  );
});

test("hidden view: Allow from the notification writes the file", async (t) => {
  const { session, host } = makeSession(env, { visible: false, notify: async () => "allow" });
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "approval",
    script: writeScript("notified.txt", "allowed by notification"),
  });
  await sendAndWait(session, a.agentId, "write");
  assert.equal(host.notified.length, 1);
  assert.equal(readFileSync(join(env.work, "notified.txt"), "utf8"), "allowed by notification");
});

test("hidden view, dismissed notification: the inline card still answers it", async (t) => {
  const { session, host } = makeSession(env, { visible: false, notify: async () => undefined });
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "approval",
    script: writeScript("late.txt", "late"),
  });
  const client = await session.start();
  const done = client.waitForEvent(a.agentId, (e) => e.event.type === "done", { timeoutMs: 20_000 });
  await session.send(a.agentId, "write");
  await waitUntil(session, () => host.notified.length === 1 && session.approvals.pending(a.agentId).length === 1);
  const [p] = session.approvals.pending(a.agentId);
  assert.equal(p.route, "notification");
  // The user opens the chat later and clicks Allow on the card.
  assert.equal(await session.decide(a.agentId, p.request.approvalId, "allow", "inline"), true);
  await done;
  assert.equal(readFileSync(join(env.work, "late.txt"), "utf8"), "late");
});

test("Always allow sends remember: true (the next fs_write is not asked)", async (t) => {
  const { session, host } = makeSession(env, { visible: false, notify: async () => "always" });
  t.after(() => session.dispose());
  // Capture what the approval handler answers the library (= the approval/request result).
  const answers = [];
  const handler = session.approvals.handler;
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "approval",
    script: [...writeScript("one.txt", "1"), ...writeScript("two.txt", "2")],
  });
  const client = await session.start();
  client.setApprovalHandler(async (req, ctx) => {
    const d = await handler(req, ctx);
    answers.push(d);
    return d;
  });
  await sendAndWait(session, a.agentId, "first");
  assert.deepEqual(answers, [{ decision: "allow", remember: true }]);
  assert.equal(readFileSync(join(env.work, "one.txt"), "utf8"), "1");
  await sendAndWait(session, a.agentId, "second");
  assert.equal(host.notified.length, 1, "remembered: no second prompt");
  assert.equal(answers.length, 1);
  assert.equal(readFileSync(join(env.work, "two.txt"), "utf8"), "2");
  const cards = a.model.tools();
  assert.equal(cards.length, 2);
  assert.equal(cards[1].state, "COMPLETED");
  assert.equal(cards[1].approval, undefined, "the policy allowed it without asking");
});

test("a click before the approval/request arrives still answers it (and Always allow is remembered)", async (t) => {
  const { session, host } = makeSession(env, { visible: true });
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "approval",
    script: [...writeScript("race1.txt", "1"), ...writeScript("race2.txt", "2")],
  });
  const routed = [];
  session.approvals.onDidRequest((p) => routed.push(p));
  const clicks = [];
  // Click "Always allow" the moment the card shows the approval (the permission_required
  // event comes just before its approval/request).
  session.onDidChange((e) => {
    if (e.type !== "items") return;
    for (const it of e.items) {
      if (it.kind === "tool" && it.approval?.status === "pending" && !clicks.includes(it.approval.approvalId)) {
        clicks.push(it.approval.approvalId);
        assert.equal(session.approvals.isPending(it.approval.approvalId), false, "request not there yet");
        void session.decide(a.agentId, it.approval.approvalId, "always");
      }
    }
  });
  await sendAndWait(session, a.agentId, "first");
  assert.equal(readFileSync(join(env.work, "race1.txt"), "utf8"), "1");
  await sendAndWait(session, a.agentId, "second");
  assert.equal(readFileSync(join(env.work, "race2.txt"), "utf8"), "2");
  assert.equal(clicks.length, 1, "remembered: the second write was not asked");
  assert.equal(routed.length, 1);
  assert.equal(host.notified.length, 0);
});

test("interrupt withdraws a pending approval (denied, prompt settled as withdrawn)", async (t) => {
  let notifySignal;
  const { session } = makeSession(env, {
    visible: false,
    notify: (req, signal) => {
      notifySignal = signal;
      return new Promise(() => {}); // the user never answers
    },
  });
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "approval",
    script: writeScript("withdrawn.txt", "x"),
  });
  const settled = [];
  session.approvals.onDidSettle((s) => settled.push(s));
  const client = await session.start();
  const done = client.waitForEvent(a.agentId, (e) => e.event.type === "done", { timeoutMs: 20_000 });
  await session.send(a.agentId, "write");
  await waitUntil(session, () => session.approvals.pending(a.agentId).length === 1);
  await session.interrupt(a.agentId);
  assert.equal((await done).event.reason, "interrupted");
  await waitUntil(session, () => settled.length === 1, 5_000, "withdrawn");
  assert.equal(settled[0].outcome, "withdrawn");
  assert.equal(notifySignal.aborted, true, "the notification is told to go away");
  assert.equal(existsSync(join(env.work, "withdrawn.txt")), false);
  const card = a.model.tools()[0];
  assert.equal(card.state, "DENIED");
  assert.equal(card.approval.decidedBy, "interrupt");
});

test("broker: routing, labels, first answer wins (no server)", async () => {
  let visible = true;
  const notified = [];
  const broker = new ApprovalBroker({
    isVisible: () => visible,
    notify: (req) => {
      notified.push(req.approvalId);
      return new Promise(() => {});
    },
  });
  const req = (id) => ({
    agentId: "a",
    approvalId: id,
    turnId: "t",
    call: { id: `c-${id}`, name: "bash_run", inputPreview: "ls" },
    title: "bash_run: ls",
    subject: { type: "command", command: "ls -la", cwd: "/w" },
    options: ["allow", "deny"],
  });
  const p1 = broker.request(req("1"));
  visible = false;
  const p2 = broker.request(req("2"));
  assert.deepEqual(
    broker.pending().map((p) => [p.request.approvalId, p.route]),
    [
      ["1", "inline"],
      ["2", "notification"],
    ],
  );
  assert.deepEqual(notified, ["2"]);
  assert.equal(broker.decide("1", "always"), true);
  assert.equal(broker.decide("1", "deny"), false);
  assert.deepEqual(await p1, { decision: "allow", remember: true });
  assert.equal(broker.decide("2", "deny", "notification"), true);
  assert.deepEqual(await p2, { decision: "deny" });
  assert.deepEqual(toDecision("allow"), { decision: "allow" });
  assert.equal(choiceFromLabel(CHOICE_LABELS.always), "always");
  assert.equal(choiceFromLabel(undefined), undefined);
  assert.equal(approvalMessage(req("3")), 'Kode agent "a" wants to run: ls -la  (in /w)');
  // A withdrawn request (signal) resolves as deny.
  const ac = new AbortController();
  const p3 = broker.request(req("4"), ac.signal);
  ac.abort();
  assert.deepEqual(await p3, { decision: "deny" });
  assert.equal(broker.pending().length, 0);
});
