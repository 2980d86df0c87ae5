/**
 * Approvals: runs the host's approval handler for each `approval/request` (or, when the
 * client said `capabilities.approvals: false`, for each live `permission_required`
 * event, answered with `agent/decide`). The same approval asked twice (re-issued after a
 * restart) gets the same answer from one prompt. A missing handler, a throw or a
 * malformed answer is a deny.
 */
import { CancellationToken } from "vscode-jsonrpc/node";
import { ErrorCodes, KodeRpcError } from "./errors.js";
import type { ApprovalRequest, ApprovalResponse, DecideParams, DecideResult, EventEnvelope } from "./protocol.js";
import type { ApprovalHandler, Logger } from "./types.js";

const MAX_REMEMBERED = 512;

export class ApprovalResponder {
  private readonly answers = new Map<string, Promise<ApprovalResponse>>();

  constructor(
    private handler: ApprovalHandler | undefined,
    private readonly logger: Logger,
    /** `agent/decide`, for approvals known from events only. */
    private readonly decide: (params: DecideParams) => Promise<DecideResult>,
  ) {}

  setHandler(handler: ApprovalHandler | undefined): void {
    this.handler = handler;
  }

  get hasHandler(): boolean {
    return this.handler !== undefined;
  }

  /** The answer to an `approval/request`. */
  answer(req: ApprovalRequest, token: CancellationToken): Promise<ApprovalResponse> {
    // The same approval re-issued after a restart (or twice) gets the same answer,
    // and a prompt still open is not shown twice.
    const key = `${req.agentId}\u0000${req.approvalId}`;
    const known = this.answers.get(key);
    if (known) return known;
    const p = this.run(req, token);
    this.answers.set(key, p);
    while (this.answers.size > MAX_REMEMBERED) this.answers.delete(this.answers.keys().next().value as string);
    return p;
  }

  private async run(req: ApprovalRequest, token: CancellationToken): Promise<ApprovalResponse> {
    const handler = this.handler;
    if (!handler) {
      this.logger.warn(`kode-rpc: approval ${req.approvalId} (${req.call?.name}) denied: no approval handler`);
      return { decision: "deny" };
    }
    const ac = new AbortController();
    const sub = token.onCancellationRequested(() => ac.abort());
    if (token.isCancellationRequested) ac.abort();
    try {
      const r = await handler(req, { signal: ac.signal, token });
      if (!r || (r.decision !== "allow" && r.decision !== "deny")) {
        this.logger.warn(`kode-rpc: approval handler returned ${JSON.stringify(r)}; denying`);
        return { decision: "deny" };
      }
      const out: ApprovalResponse = { decision: r.decision };
      if (r.remember) out.remember = true;
      if (typeof r.note === "string") out.note = r.note;
      return out;
    } catch (e) {
      this.logger.warn(`kode-rpc: approval handler threw (${String(e)}); denying`);
      return { decision: "deny" };
    } finally {
      sub.dispose();
    }
  }

  /** Without `capabilities.approvals`: a live `permission_required` event, answered with `agent/decide`. */
  async answerEvent(env: EventEnvelope): Promise<void> {
    const ev = env.event as { type: "permission_required"; approvalId: string; call: ApprovalRequest["call"] };
    const req: ApprovalRequest = {
      agentId: env.agentId,
      approvalId: ev.approvalId,
      turnId: env.turnId ?? "",
      call: ev.call,
      title: `${ev.call?.name ?? "tool"}`,
      subject: { type: "tool_call" },
      options: ["allow", "deny"],
    };
    const r = await this.answer(req, CancellationToken.None);
    try {
      await this.decide({ agentId: env.agentId, approvalId: ev.approvalId, decision: r.decision, note: r.note });
    } catch (e) {
      if (e instanceof KodeRpcError && (e.code === ErrorCodes.ApprovalNotPending || e.code === ErrorCodes.NotFound)) return;
      this.logger.warn(`kode-rpc: agent/decide for ${ev.approvalId} failed: ${String(e)}`);
    }
  }
}
