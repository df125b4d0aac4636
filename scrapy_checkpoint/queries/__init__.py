"""Shopping queries answered from checkpointed crawls: "cheapest red dress under $50"."""

from .intent import QueryError, parse_query, tokenize

__all__ = ["QueryError", "parse_query", "tokenize"]
