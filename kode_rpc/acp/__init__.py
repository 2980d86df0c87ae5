"""ACP mode: `kode-rpc acp`, the Agent Client Protocol face over the runtime service."""
