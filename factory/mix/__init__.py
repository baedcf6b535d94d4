"""`factory mix`: curated sets combined to counts or ratios, seeded, with lineage."""
