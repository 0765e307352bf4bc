"""Collections: every sidecar of a folder or prefix as one matrix, and its uses
(similar, duplicates, clusters, the HTML report, export)."""
