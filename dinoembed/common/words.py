"""Counts in words: "1 group", "2 groups" (every message that counts things)."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``plural(1, "group")`` -> ``"1 group"``; ``plural(2, "group")`` -> ``"2 groups"``."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"
