"""mobiledense.heads."""
