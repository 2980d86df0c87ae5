"""kode-rpc: a headless agent backend driven over JSON-RPC on stdio."""

__version__ = "0.1.0"
