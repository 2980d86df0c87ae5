"""What can go wrong in the runtime, in the runtime's own words.

The runtime raises these; each face translates them to its wire format (the kode
protocol's error codes in `server/errors.py`, ACP's in `acp/`). So the runtime
knows nothing of JSON-RPC codes, and a face cannot forget a `reason`.
"""

from __future__ import annotations

from typing import Any


class RuntimeFault(Exception):
    """Base of the runtime's expected failures; `reason` is the wire's `data.reason`."""

    reason = "runtime_error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class NotFound(RuntimeFault):
    """An agent, template or approval that does not exist."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} not found: {ident}", id=ident)
        self.kind = kind
        self.reason = f"{kind}_not_found"


class InvalidInput(RuntimeFault):
    """Params that validated but make no sense here (a taken id, a seq past the end)."""

    def __init__(self, message: str, field: str, why: str, reason: str = "invalid_params") -> None:
        super().__init__(message, errors=[{"field": field, "message": why}])
        self.reason = reason


class AgentExists(InvalidInput):
    def __init__(self, agent_id: str, field: str = "agentId") -> None:
        super().__init__(f"agent {agent_id} already exists", field, "an agent with this id exists", "agent_exists")


class AgentBusy(InvalidInput):
    def __init__(self, agent_id: str, what: str) -> None:
        super().__init__(f"agent {agent_id} is running a turn: {what}", "agentId", "the agent is busy", "agent_busy")


class AgentLocked(RuntimeFault):
    """The agent is run by another server process."""

    reason = "agent_locked"

    def __init__(self, agent_id: str, pid: int, host: str) -> None:
        super().__init__(f"agent {agent_id} is run by another process (pid {pid})",
                         owner={"pid": pid, "host": host}, pid=pid, host=host)


class Unavailable(RuntimeFault):
    """Retryable: the pool is full, the server is shutting down, the store is away."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, retryable=True)
        self.reason = reason


class ApprovalNotPending(RuntimeFault):
    reason = "approval_not_pending"

    def __init__(self, approval_id: str, recorded: dict[str, Any]) -> None:
        super().__init__(f"approval {approval_id} was already decided", recordedDecision=recorded)
