"""Shopping queries answered from checkpointed crawls: "cheapest red dress under $50"."""

from .intent import QueryError, Vocabulary, parse_query, tokenize
from .privacy import mask_query, user_key
from .results import (
    FieldMap,
    QueryResult,
    aggregate,
    match,
    parse_price,
    prefilter,
    vocabulary_from_items,
)

__all__ = [
    "FieldMap", "QueryError", "QueryResult", "Vocabulary", "aggregate", "mask_query", "match",
    "parse_price", "parse_query", "prefilter", "tokenize", "user_key", "vocabulary_from_items",
]
