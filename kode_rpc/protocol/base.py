"""Shared base for every wire model.

Wire names are camelCase (the contract's spelling); Python code uses snake_case.
The alias generator keeps the two apart so nobody hand-writes aliases, and
`populate_by_name` lets runtime code build models with Python names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """Base of all protocol types: camelCase on the wire, unknown keys ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=False,
        defer_build=True,  # build validators on first use: keeps them off the start-up path
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict sent on the wire (aliases, no None-valued optionals)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class OpenModel(WireModel):
    """A wire model that keeps unknown keys (tool inputs, metadata-like objects)."""

    model_config = ConfigDict(extra="allow")
