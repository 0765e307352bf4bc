"""Results: the sidecar schema, sidecar names and the currency rule, coverage."""
