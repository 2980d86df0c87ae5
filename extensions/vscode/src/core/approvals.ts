/**
 * Approval routing: the server's `approval/request` lands here (through the library's
 * approval handler). If the agent's chat view is visible, the prompt is answered inline
 * (Allow / Deny / Always allow on the tool card); when it is hidden, a notification with
 * the same three buttons is shown as well. The first answer wins; the request is settled
 * exactly once. No `vscode` here: the host passes `isVisible` and `notify`.
 */
import type { ApprovalContext, ApprovalDecision, ApprovalRequest } from "@kode-rpc/client";
import type { ApprovalChoice } from "./chatModel.js";
import { Emitter } from "./events.js";

export type ApprovalRoute = "inline" | "notification";

export interface ApprovalHost {
  /** Whether the chat view of this agent is visible right now. */
  isVisible(agentId: string): boolean;
  /**
   * Shows a notification with the three choices; resolves with the choice, or
   * undefined when dismissed (the prompt then stays pending in the chat view).
   * `signal` aborts when the request is settled elsewhere or withdrawn.
   */
  notify(request: ApprovalRequest, signal: AbortSignal): Promise<ApprovalChoice | undefined>;
}

export interface PendingApproval {
  request: ApprovalRequest;
  route: ApprovalRoute;
  receivedAt: number;
}

export interface ApprovalSettled {
  request: ApprovalRequest;
  route: ApprovalRoute;
  /** The answer sent, or "withdrawn" when the server cancelled the request. */
  outcome: ApprovalChoice | "withdrawn";
  /** Where the answer came from. */
  via: "inline" | "notification" | "server";
}

export const APPROVAL_CHOICES: readonly ApprovalChoice[] = ["allow", "deny", "always"];

export const CHOICE_LABELS: Record<ApprovalChoice, string> = {
  allow: "Allow",
  deny: "Deny",
  always: "Always allow",
};

export function isApprovalChoice(v: unknown): v is ApprovalChoice {
  return v === "allow" || v === "deny" || v === "always";
}

/** Maps a button to the `approval/request` result. "always" = allow + remember. */
export function toDecision(choice: ApprovalChoice, note?: string): ApprovalDecision {
  const d: ApprovalDecision =
    choice === "always" ? { decision: "allow", remember: true } : { decision: choice };
  if (note) d.note = note;
  return d;
}

/** Maps a notification button label back to the choice. */
export function choiceFromLabel(label: string | undefined): ApprovalChoice | undefined {
  return APPROVAL_CHOICES.find((c) => CHOICE_LABELS[c] === label);
}

/** One line for a notification: who wants to do what. */
export function approvalMessage(req: ApprovalRequest): string {
  const who = `Kode agent "${req.agentId}"`;
  const s = req.subject;
  if (s.type === "command") return `${who} wants to run: ${truncate(s.command, 200)}  (in ${s.cwd})`;
  if (s.type === "file_change") return `${who} wants to change ${s.path} (${req.call.name})`;
  const preview = req.call.inputPreview ? `: ${truncate(req.call.inputPreview, 200)}` : "";
  return `${who} wants to use ${req.call.name}${preview}`;
}

function truncate(s: string, n: number): string {
  const one = s.replace(/\s+/g, " ").trim();
  return one.length > n ? `${one.slice(0, n - 1)}…` : one;
}

interface Entry extends PendingApproval {
  resolve(choice: ApprovalChoice | "withdrawn", via: ApprovalSettled["via"]): void;
  abort: AbortController;
}

export class ApprovalBroker {
  private readonly pendingMap = new Map<string, Entry>();
  private readonly onPendingEmitter = new Emitter<PendingApproval>();
  private readonly onSettledEmitter = new Emitter<ApprovalSettled>();
  /** A new approval is waiting (after routing). */
  readonly onDidRequest = this.onPendingEmitter.event;
  /** An approval was answered or withdrawn. */
  readonly onDidSettle = this.onSettledEmitter.event;

  /** Answers given through `agent/decide` before their `approval/request` arrived. */
  private readonly answeredElsewhere = new Map<string, ApprovalChoice>();
  private readonly waiters = new Map<string, Set<() => void>>();

  constructor(private readonly host: ApprovalHost) {}

  /**
   * Resolves true once an `approval/request` for `approvalId` is pending here (at once if
   * it is), false after `timeoutMs`. The `permission_required` event reaches the chat
   * view a moment before its `approval/request`: a click in between waits for it.
   */
  waitFor(approvalId: string, timeoutMs: number): Promise<boolean> {
    if (this.pendingMap.has(approvalId)) return Promise.resolve(true);
    return new Promise((resolve) => {
      let set = this.waiters.get(approvalId);
      if (!set) this.waiters.set(approvalId, (set = new Set()));
      const done = (v: boolean) => {
        clearTimeout(timer);
        set!.delete(wake);
        if (set!.size === 0) this.waiters.delete(approvalId);
        resolve(v);
      };
      const wake = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      set.add(wake);
    });
  }

  /** Records an answer sent with `agent/decide`; a late `approval/request` for it gets the same answer. */
  answeredWithDecide(approvalId: string, choice: ApprovalChoice): void {
    this.answeredElsewhere.set(approvalId, choice);
    while (this.answeredElsewhere.size > 256) {
      this.answeredElsewhere.delete(this.answeredElsewhere.keys().next().value as string);
    }
  }

  /** The library's `approvalHandler`. */
  readonly handler = (request: ApprovalRequest, context: ApprovalContext): Promise<ApprovalDecision> =>
    this.request(request, context.signal);

  /** Which path a request for this agent takes now. */
  route(agentId: string): ApprovalRoute {
    let visible = false;
    try {
      visible = this.host.isVisible(agentId);
    } catch {
      visible = false;
    }
    return visible ? "inline" : "notification";
  }

  request(request: ApprovalRequest, signal?: AbortSignal): Promise<ApprovalDecision> {
    const key = request.approvalId;
    const early = this.answeredElsewhere.get(key);
    if (early) {
      // Already answered with agent/decide (the click came before this request): same answer, no prompt.
      this.answeredElsewhere.delete(key);
      return Promise.resolve(toDecision(early));
    }
    const existing = this.pendingMap.get(key);
    if (existing) {
      // The same approval again (re-issued): the same prompt answers both.
      return new Promise((res) => {
        const prev = existing.resolve;
        existing.resolve = (c, via) => {
          prev(c, via);
          res(c === "withdrawn" ? { decision: "deny" } : toDecision(c));
        };
      });
    }
    return new Promise<ApprovalDecision>((resolve) => {
      const abort = new AbortController();
      const route = this.route(request.agentId);
      let settled = false;
      const entry: Entry = {
        request,
        route,
        receivedAt: Date.now(),
        abort,
        resolve: (choice, via) => {
          if (settled) return;
          settled = true;
          this.pendingMap.delete(key);
          abort.abort();
          signal?.removeEventListener("abort", onWithdraw);
          this.onSettledEmitter.fire({ request, route, outcome: choice, via });
          resolve(choice === "withdrawn" ? { decision: "deny" } : toDecision(choice));
        },
      };
      const onWithdraw = () => entry.resolve("withdrawn", "server");
      this.pendingMap.set(key, entry);
      if (signal?.aborted) {
        onWithdraw();
        return;
      }
      signal?.addEventListener("abort", onWithdraw, { once: true });
      for (const wake of [...(this.waiters.get(key) ?? [])]) wake();
      this.onPendingEmitter.fire({ request, route, receivedAt: entry.receivedAt });
      if (route === "notification") {
        this.host.notify(request, abort.signal).then(
          (choice) => {
            if (choice) entry.resolve(choice, "notification");
          },
          () => {
            /* a failed notification leaves the inline prompt */
          },
        );
      }
    });
  }

  /**
   * Answers a pending approval (inline buttons, or a notification). Returns false when
   * it is not pending here (already answered, withdrawn, or never asked through
   * `approval/request`).
   */
  decide(approvalId: string, choice: ApprovalChoice, via: "inline" | "notification" = "inline"): boolean {
    const e = this.pendingMap.get(approvalId);
    if (!e) return false;
    e.resolve(choice, via);
    return true;
  }

  isPending(approvalId: string): boolean {
    return this.pendingMap.has(approvalId);
  }

  pending(agentId?: string): PendingApproval[] {
    return [...this.pendingMap.values()]
      .filter((e) => agentId === undefined || e.request.agentId === agentId)
      .map(({ request, route, receivedAt }) => ({ request, route, receivedAt }));
  }

  /** Withdraws everything (the client is going away): each request is denied. */
  dispose(): void {
    for (const e of [...this.pendingMap.values()]) e.resolve("withdrawn", "server");
    this.onPendingEmitter.dispose();
    this.onSettledEmitter.dispose();
  }
}
