"""mobiledense.tools."""
