"""Shopping queries answered from checkpointed crawls: "cheapest red dress under $50"."""

from .intent import QueryError, parse_query, tokenize
from .privacy import mask_query, user_key
from .results import FieldMap, QueryResult, aggregate, match, parse_price

__all__ = [
    "FieldMap", "QueryError", "QueryResult", "aggregate", "mask_query", "match", "parse_price",
    "parse_query", "tokenize", "user_key",
]
