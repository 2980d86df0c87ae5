"""The permission policy of contract section 5, as a pure function.

Order: denyTools denies; a non-empty allowTools denies what it does not list;
a tool the user chose to "always allow" (`remember: true`) is allowed; then
requireApprovalTools asks; then the mode: `auto` allows, `approval` asks,
`readonly` allows tools that change nothing and asks for the rest.

Remembered tools are kept apart from `allowTools` on purpose: adding a tool to a
previously empty `allowTools` would turn it into a whitelist and deny every
other tool, the opposite of what "always allow" means.
"""

from __future__ import annotations

from typing import Literal

from ..protocol.agents import PermissionConfig

Verdict = Literal["allow", "deny", "ask"]


def evaluate(policy: PermissionConfig, tool: str, readonly: bool, remembered: frozenset[str] | set[str]) -> tuple[Verdict, str]:
    """The verdict and a short reason (told to the model on a policy denial)."""
    if tool in (policy.deny_tools or []):
        return "deny", f"tool {tool} is in the agent's denyTools"
    if policy.allow_tools and tool not in policy.allow_tools:
        return "deny", f"tool {tool} is not in the agent's allowTools"
    if tool in remembered:
        return "allow", "always allowed by the user"
    if tool in (policy.require_approval_tools or []):
        return "ask", "tool requires approval"
    if policy.mode == "auto":
        return "allow", "mode auto"
    if policy.mode == "readonly" and readonly:
        return "allow", "read-only tool in readonly mode"
    return "ask", f"mode {policy.mode}"
