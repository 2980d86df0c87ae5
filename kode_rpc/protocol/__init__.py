"""Wire types of protocol v1: pydantic models only, no I/O, no imports from the rest of kode_rpc."""

PROTOCOL_VERSION = 1
