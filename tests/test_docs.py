"""The protocol doc is generated from the models; it must be committed up to date."""

from __future__ import annotations

from pathlib import Path

from kode_rpc.protocol.docs import render


def test_protocol_doc_is_in_sync_with_models() -> None:
    committed = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    assert committed == render(), "run: python -m kode_rpc.protocol.docs > docs/protocol.md"
