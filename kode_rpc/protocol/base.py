"""Shared base for every wire model.

Wire names are camelCase (the contract's spelling); Python code uses snake_case.
The alias generator keeps the two apart so nobody hand-writes aliases, and
`populate_by_name` lets runtime code build models with Python names.

The model modules (agents, events, system, approvals) do not use `from __future__
import annotations`: with it, pydantic `eval`s every annotation string when the class
is created, ~5 ms of every start for their ~120 classes and ~400 fields.
"""

from __future__ import annotations

import typing
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


def _is_object_type(annotation: Any) -> bool:
    """Whether a field's type is an object (a model or a dict), possibly optional."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_is_object_type(a) for a in args)
    if origin is typing.Annotated:
        return _is_object_type(typing.get_args(annotation)[0])
    if annotation is dict or origin is dict:
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


@lru_cache(maxsize=None)
def _object_keys(cls: type[BaseModel]) -> frozenset[str]:
    """Wire names (and Python names) of the model's object-typed fields."""
    keys: set[str] = set()
    for name, f in cls.model_fields.items():
        if _is_object_type(f.annotation):
            keys.update({name, f.alias or name})
    return frozenset(keys)


@lru_cache(maxsize=None)
def _required_nullable(cls: type[BaseModel]) -> tuple[str, ...]:
    return tuple(name for name, f in cls.model_fields.items()
                 if f.is_required() and type(None) in typing.get_args(f.annotation))


class WireModel(BaseModel):
    """Base of all protocol types: camelCase on the wire, unknown keys ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=False,
        defer_build=True,  # build validators on first use: keeps them off the start-up path
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_list_is_empty_object(cls, data: Any) -> Any:
        """Neovim encodes an empty Lua table `{}` as `[]`; for an object field it means `{}`."""
        if isinstance(data, dict) and any(v == [] for v in data.values()):
            keys = _object_keys(cls)
            return {k: ({} if v == [] and k in keys else v) for k, v in data.items()}
        return data

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict sent on the wire: aliases, optional fields left out when None,
        required nullable fields (e.g. a policy decision's `approvalId`) kept as null."""
        out = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        for name in _required_nullable(type(self)):
            if getattr(self, name) is None:
                out[type(self).model_fields[name].alias or name] = None
        return out
