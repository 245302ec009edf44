"""mobiledense.datasets."""
