"""JSON Schema of the whole protocol, generated from the pydantic models.

This is the single source of truth for the TypeScript and Lua clients.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .errors import ERRORS
from .methods import METHODS


def protocol_schema(version: str) -> dict[str, Any]:
    models: list[type[BaseModel]] = []
    for method in METHODS.values():
        for model in (method.params, method.result):
            if model is not None and model not in models:
                models.append(model)
    keys, defs = models_json_schema(
        [(m, "serialization") for m in models], by_alias=True, ref_template="#/$defs/{model}"
    )
    refs = {model: keys[(model, "serialization")]["$ref"] for model in models}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kode-rpc protocol v1",
        "x-serverVersion": version,
        "x-protocolVersion": 1,
        "methods": {
            name: {
                "direction": m.direction,
                "kind": m.kind,
                "summary": m.summary,
                "params": {"$ref": refs[m.params]},
                "result": {"$ref": refs[m.result]} if m.result else {"type": "null"},
            }
            for name, m in METHODS.items()
        },
        "errors": [{"code": e.code, "name": e.name, "meaning": e.meaning, "reasons": list(e.reasons)} for e in ERRORS],
        "$defs": defs.get("$defs", {}),
    }
