"""The query prefilter: substrings a stored item's text must hold to match, and the store that filters by them."""

from __future__ import annotations

import json

import pytest
from fashion_shop import Catalog

from scrapy_checkpoint.queries import (
    FieldMap,
    aggregate,
    parse_query,
    prefilter,
    vocabulary_from_items,
)
from scrapy_checkpoint.queries.session import ItemSource
from scrapy_checkpoint.stores.base import CheckpointStore
from scrapy_checkpoint.stores.sqlite import SQLiteCheckpointStore

from . import batch, new_checkpoint

TTL = 3600.0

#: Items a catalog does not have: what a field or a title may hold that a prefilter must not lose.
EDGE_ITEMS = [
    {"title": "Summer Favourite Dress", "type": "Clothing", "price": 30},  # the title decides
    {"title": "Summer Favourite", "category": "Dresses", "price": 31},  # the field decides
    {"title": "Red Dress", "color": "as pictured", "price": "$45.00"},  # colour only in the title
    {"title": "Gray Wool Sweater", "price": 40},
    {"title": "Heather Grey Jumper", "colour": "Heather Grey", "price": "40,00 €"},
    {"title": 'The "Grey" Jumper', "color": "n/a", "price": 20},  # quotes, escaped in JSON
    {"title": "Navy Blue Skirt", "colour": "Navy", "price": 25},
    {"title": "Pleated Skirt", "color": "Navy Blue", "price": 26},
    {"title": "Pleated S\u212aIRT", "price": 27},  # a Kelvin sign: "skirt" once lowercased
    {"title": "Crème Silk Blouse", "price": 50},  # non-ASCII, escaped in JSON
    {"title": "Robe crème", "type": "dress", "price": 51},
    {"title": "Café Linen Shirt", "material": "Lin", "price": 52},
    {"title": "Shirt", "material": "linen", "price": 53},
    {"name": "The North Face Nuptse Jacket", "brand": "The North Face", "price": 300},
    {"title": "Insulated Jacket", "brand": "North Face", "price": 280},
    {"title": "Boho Kimono", "brand": ["Ridgeline"], "type": "Women > Kimono", "gender": "female"},
    {"title": "Women\u2019s Silk Kimonos", "type": "Kimonos"},
    {"title": ["Floral", "Maxi Dress"], "color": ["Red", "White"], "price": 33},  # lists
    {"title": 12345, "type": "dress", "price": 34},  # a title that is a number
    {"title": "Dress", "size": 1e17, "price": 35},  # a number json.dumps writes as 1e+17
    {"title": "Dress", "category": {"name": "Dresses"}, "price": 36},  # a field no text reads
    {"title": "Dresses, pack of 2", "price": "$30"},
    {"title": "T\u2010Shirt Dress", "price": 37},  # a Unicode hyphen
    {"title": "Black Leather Dress Shoes", "price": 90},
    {"title": "Address book", "price": 5},
    {"title": "Floral dress with pockets", "rating": 4.5, "listed": "2026-01-02", "price": 41},
    {"title": "Light blue shirt", "color": "lightblue", "size": "10", "price": 21},
    {"title": "Slim Jeans", "size": ["30", "32"], "price": 60},
    {"title": "Black and white sneakers", "color": "black/white", "size": ["42"], "price": 70},
    {"title": "Leather boots", "material": "Leather", "size": "42", "price": 120},
    {"title": "Backslash \\ dress", "sku": "B\\1", "price": 12},
    {"sku": "NOTHING-1", "price": 1},
    {},
]

QUERIES = [
    "cheapest red dress under $50", "dress", "dresses", "linen", "grey jumper", "gray sweater",
    "navy blue skirt", "skirt", "the north face jacket", "north face", "crème", "crème dress",
    "women's kimono", "kimonos", "maxi dress", "black and white sneakers", "leather boots size 42",
    "size 10 shirt", "light blue shirt", "slim jeans 32", "t-shirt dress", "café", "pockets",
    "best rated ridgeline jeans", "beige polyester jacket", "newest floral dress", '"grey" jumper',
    "maison clair", "boho", "address", "size 100000000000000000 dress", "dress 100000000000000000",
]


def catalog_items():
    items = [{**p, "url": f"http://shop.test/{p['sku']}"} for shop in ("northwind", "lumiere")
             for p in Catalog(shop, 150).products]
    return items + EDGE_ITEMS


ITEMS = catalog_items()
VOCABULARY = vocabulary_from_items(ITEMS)


def may_match(item, groups):
    """The prefilter's rule, in Python: one substring of each group in the item's JSON text."""
    text = json.dumps(item, default=str).lower()
    return all(any(s in text for s in group) for group in groups)


def results(intent, items):
    return [r.model_dump() for r in aggregate(intent, [("shop.test", items)], fields=FieldMap())]


@pytest.mark.parametrize("vocabulary", [None, VOCABULARY], ids=["builtin", "vocabulary"])
@pytest.mark.parametrize("query", QUERIES)
def test_prefilter_keeps_every_match(query, vocabulary):
    intent = parse_query(query, vocabulary)
    groups = prefilter(intent)
    assert all(s == s.lower() and s.isascii() for group in groups for s in group)
    kept = [item for item in ITEMS if may_match(item, groups)]
    assert results(intent, kept) == results(intent, ITEMS)


@pytest.mark.parametrize(("query", "expected"), [
    ("dress", [("dress", "gown")]),
    ("cheapest red dress under $50", [("dress", "gown"), ("red",)]),  # the price bound gives none
    ("gray sweater", [("jumper", "pullover", "sweater"), ("gray", "grey")]),
    ("navy blue skirt", [("skirt", "\\u0130", "\\u212a"), ("navy",)]),
    ("crème", []),  # a character json.dumps escapes: not safe
    ("size 100000000000000000 dress", [("dress", "gown")]),  # a float of it is written 1e+17
])
def test_prefilter_groups(query, expected):
    assert prefilter(parse_query(query)) == expected


def test_prefilter_is_selective():
    intent = parse_query("cheapest red dress under $50")
    kept = [item for item in ITEMS if may_match(item, prefilter(intent))]
    assert results(intent, kept)
    assert len(kept) < len(ITEMS) / 5


def test_prefilter_reads_the_field_map():
    intent = parse_query("linen shirt")
    assert prefilter(intent, FieldMap({"material": "fabric"})) == prefilter(intent)
    items = [{"title": "Shirt", "fabric": "Linen"}, {"title": "Shirt", "material": "cotton"}]
    fields = FieldMap({"material": "fabric"})
    kept = [item for item in items if may_match(item, prefilter(intent, fields))]
    assert aggregate(intent, [("s", kept)], fields=fields) == aggregate(intent, [("s", items)], fields=fields)


# -- the store -------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    store = SQLiteCheckpointStore(tmp_path / "checkpoints.sqlite3")
    store.open()
    yield store
    store.close()


def stored(store, items, per_batch=50):
    checkpoint = new_checkpoint()
    store.create(checkpoint)
    other = new_checkpoint(spider="other")
    store.create(other)
    for seq, start in enumerate(range(0, len(items), per_batch), 1):
        chunk = [("Product", item) for item in items[start:start + per_batch]]
        store.apply(checkpoint.checkpoint_id, batch(seq, items=chunk, item_counts={"Product": len(chunk)}), TTL)
        store.apply(other.checkpoint_id, batch(seq, items=chunk[:3], item_counts={"Product": 3}), TTL)
    return checkpoint.checkpoint_id


@pytest.mark.parametrize("query", QUERIES)
def test_sqlite_matching_items(store, query, monkeypatch):
    monkeypatch.setattr("scrapy_checkpoint.stores.sqlite.ITEMS_PAGE", 7)  # several pages
    cid = stored(store, ITEMS)
    everything = [fields for _, fields in store.items(cid)]
    groups = prefilter(parse_query(query, VOCABULARY))
    found = list(store.matching_items(cid, groups))
    assert [fields for _, fields in found] == [item for item in everything if may_match(item, groups)]
    assert {item_type for item_type, _ in found} <= {"Product"}


def test_sqlite_matching_items_escapes_like(store):
    items = [{"title": "100% cotton"}, {"title": "1000 cotton"}, {"title": "snake_case"}, {"title": "snakeXcase"},
             {"title": "back\\slash"}, {"title": "DRESS"}, {"title": "Crème"}]
    cid = stored(store, items)

    def titles(contains):
        return [fields.get("title") for _, fields in store.matching_items(cid, contains)]

    assert titles([("0%",)]) == ["100% cotton"]
    assert titles([("e_c",)]) == ["snake_case"]
    assert titles([("\\\\",)]) == ["back\\slash"]  # as JSON writes a backslash
    assert titles([("dress",)]) == ["DRESS"]  # ASCII case folded, as the rule lowercases
    assert titles([("\\u00e8",)]) == ["Crème"]  # as JSON writes it
    assert titles([("cotton",), ("100", "snake")]) == ["100% cotton", "1000 cotton"]
    assert titles([("crème",)]) == titles([("DRESS",)]) == titles([]) == titles([("",)]) == [
        item["title"] for item in items]  # groups it cannot test in SQL are left out


def test_item_source_filters_in_the_store(store):
    cid = stored(store, ITEMS)
    intent = parse_query("cheapest red dress under $50")
    source = ItemSource(store)
    kept = list(source.items(cid, prefilter(intent)))
    assert len(kept) < len(ITEMS) / 5
    assert results(intent, kept) == results(intent, list(source.items(cid)))


def test_matching_items_default_returns_every_item(tmp_path):
    class Store(SQLiteCheckpointStore):
        matching_items = CheckpointStore.matching_items

    store = Store(tmp_path / "checkpoints.sqlite3")
    store.open()
    try:
        cid = stored(store, [{"title": "Dress"}, {"title": "Shirt"}])
        assert list(store.matching_items(cid, [("dress",)])) == list(store.items(cid))
    finally:
        store.close()
