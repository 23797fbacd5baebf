"""Detection-quality tooling: a multi-seed evaluation protocol and a synthetic-defect localisation set."""
