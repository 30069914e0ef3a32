"""Results: tidy tables, their CSV/JSON/LaTeX writers, and the sweep store."""
