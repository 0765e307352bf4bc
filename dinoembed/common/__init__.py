"""Small utilities every stage uses: atomic writes, logging set-up, a progress line,
vector normalisation."""
