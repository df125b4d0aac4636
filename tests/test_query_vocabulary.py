"""A query vocabulary grown from the sites' own items: their brands, product types, materials and colours."""

from __future__ import annotations

import pytest
from fashion_shop import Catalog

from scrapy_checkpoint.models import ParsedIntent
from scrapy_checkpoint.queries import (
    FieldMap,
    Vocabulary,
    match,
    parse_query,
    vocabulary_from_items,
)

from .test_query_intent import QUERIES, intent

ITEMS = [
    {"title": "Silk Kimono", "brand": "Maison Clair", "type": "Kimonos", "color": "Sage",
     "material": "Silk"},
    {"title": "Boho Kimono", "brand": ["Ridgeline"], "type": "Women > Kimono",
     "color": "Heather Grey / Black", "material": "80% Tencel, 20% Linen"},
    {"title": "Fringe Poncho", "brand": "The Kooples", "type": "Poncho", "color": "Terracotta",
     "material": "Merino"},
    {"title": "Wrap Dress", "brand": "Nike", "type": "Dresses", "color": "001", "material": "Cotton"},
    {"title": "Denim Jacket", "brand": "Ridgeline", "type": "Jackets", "color": "blue", "material": "Denim"},
]


@pytest.fixture(scope="module")
def vocabulary():
    return vocabulary_from_items(ITEMS)


def test_vocabulary_from_items(vocabulary):
    assert vocabulary.brands == {"maison clair": "maison clair", "ridgeline": "ridgeline",
                                 "the kooples": "the kooples"}
    # "Kimonos" and "Kimono" are one type; "Dresses" is the built-in dress.
    assert vocabulary.product_types == {"dresses": "dress", "jackets": "jacket", "kimono": "kimono",
                                        "kimonos": "kimono", "poncho": "poncho"}
    assert vocabulary.materials == {"tencel": "tencel"}  # silk, linen, merino: built in
    assert vocabulary.colors == {"heather grey": "heather grey", "sage": "sage",
                                 "terracotta": "terracotta"}


@pytest.mark.parametrize(("query", "without", "with_vocabulary"), [
    ("ridgeline jeans", intent("jeans", keywords=["ridgeline"]), intent("jeans", brand="ridgeline")),
    ("maison clair kimono under $80", intent(max=80, currency="USD", keywords=["maison", "clair", "kimono"]),
     intent("kimono", brand="maison clair", max=80, currency="USD")),
    ("cheapest kimonos by the kooples", intent(order="price_asc", keywords=["kimonos", "kooples"]),
     intent("kimono", brand="the kooples", order="price_asc")),
    ("terracotta poncho", intent(keywords=["terracotta", "poncho"]), intent("poncho", color="terracotta")),
    ("tencel dress", intent("dress", keywords=["tencel"]), intent("dress", material="tencel")),
    ("heather grey hoodie", intent("hoodie", color="grey", keywords=["heather"]),
     intent("hoodie", color="heather grey")),
    # the built-ins keep their meaning: merino is merino wool, nike and blue as they were
    ("merino poncho", intent(material="merino wool", keywords=["poncho"]),
     intent("poncho", material="merino wool")),
    ("blue nike dresses", intent("dress", color="blue", brand="nike"), intent("dress", color="blue", brand="nike")),
    ("dresses by reformation", intent("dress", brand="reformation"), intent("dress", brand="reformation")),
])
def test_parse_with_vocabulary(vocabulary, query, without, with_vocabulary):
    assert parse_query(query) == without
    assert parse_query(query, vocabulary) == with_vocabulary


@pytest.mark.parametrize(("query", "expected"), QUERIES)
def test_builtin_queries_unchanged(vocabulary, query, expected):
    assert parse_query(query, Vocabulary()) == expected
    assert parse_query(query, None) == expected


def test_vocabulary_given_by_hand():
    vocabulary = Vocabulary(brands=["Maison Clair"], product_types={"Kimonos": "Kimono", "Gowns": "Gown"},
                            materials=["Tencel"], colors=["Sage"])
    assert vocabulary.product_types == {"gowns": "dress", "kimonos": "kimono"}
    assert parse_query("sage tencel kimono by maison clair", vocabulary) == intent(
        "kimono", color="sage", material="tencel", brand="maison clair")
    assert vocabulary == Vocabulary(brands={"maison clair": "maison clair"}, colors=["sage"],
                                    materials=["tencel"], product_types={"kimonos": "kimono", "gowns": "dress"})
    assert len(vocabulary) == 5
    with pytest.raises(TypeError, match="must be strings"):
        Vocabulary(brands=[3])


def test_values_left_out():
    vocabulary = vocabulary_from_items([
        {"brand": "A Very Long Brand Name Indeed", "type": "2024", "color": ["42", "Red"]},
        {"brand": "Apple", "type": "Maxi Dresses", "material": "100% Cotton", "color": "Light Blue"},
        {"type": "Silk Kimono Robe", "color": "as pictured"},
        {"type": "Kimono Dress"},  # a dress: the built-ins read it
    ])
    assert vocabulary.brands == {}
    assert vocabulary.product_types == {"kimono robe": "kimono robe"}
    assert vocabulary.materials == {}
    assert vocabulary.colors == {"as pictured": "as pictured"}


def test_deterministic_limit_and_field_map():
    items = [{"maker": "Oakmere"}, {"maker": "Kestrel", "kind": "Poncho"}, {"maker": "Solenne"}]
    fields = FieldMap({"brand": "maker", "type": "kind"})
    assert vocabulary_from_items(items, fields) == vocabulary_from_items(reversed(items), fields)
    assert vocabulary_from_items(items, fields).product_types == {"poncho": "poncho"}
    assert vocabulary_from_items(iter(items), fields, limit=2).brands == {"kestrel": "kestrel",
                                                                          "oakmere": "oakmere"}
    assert vocabulary_from_items(items, limit=2) == Vocabulary()  # the default fields: none here


def test_items_match_what_the_vocabulary_parsed(vocabulary):
    kimono = parse_query("maison clair kimono", vocabulary)
    assert match(ITEMS[0], kimono) == {"product_type": "kimono", "brand": "maison clair"}
    assert match(ITEMS[1], kimono) is None  # another brand
    assert match(ITEMS[3], parse_query("kimono", vocabulary)) is None  # a dress
    # A type field that names no product: the title says it, in either number.
    assert match({"type": "Clothing", "title": "Boho Ponchos"}, parse_query("poncho", vocabulary))
    # A colour only the vocabulary knows, said by the colour field and not the title.
    assert match({"color": "Terracotta", "title": "Linen Dress"}, parse_query("terracotta dress", vocabulary))
    assert match({"color": "Red", "title": "Linen Dress"}, parse_query("terracotta dress", vocabulary)) is None


def test_demo_catalog_brands():
    vocabulary = vocabulary_from_items(Catalog("northwind", 150).products)
    assert {"ridgeline", "northwind basics", "harbor pine"} <= set(vocabulary.brands)
    assert vocabulary.product_types["t-shirt"] == "t-shirt"
    parsed = parse_query("northwind basics t-shirt under $30", vocabulary)
    assert parsed == intent("t-shirt", brand="northwind basics", max=30, currency="USD")
    assert parse_query("Harbor & Pine boots", vocabulary).attributes == {"brand": "harbor pine"}
    assert isinstance(parsed, ParsedIntent)
