"""Shopping query parsing: real-world queries and the intent a shopper means by each."""

from __future__ import annotations

import importlib
import re
import sys

import pytest

from scrapy_checkpoint.models import ParsedIntent
from scrapy_checkpoint.queries import QueryError, parse_query


def intent(product=None, *, min=None, max=None, currency=None, order=None, keywords=(), **attributes):
    """The intent written compactly: attribute keyword arguments go to ``attributes``."""
    return ParsedIntent(
        product_type=product, attributes=attributes, order=order, keywords=list(keywords),
        price_range={"min": min, "max": max, "currency": currency},
    )


QUERIES = [
    # the issue's own example, and plain phrasings of a price cap
    ("find cheapest red dress under $50",
     intent("dress", color="red", max=50, currency="USD", order="price_asc")),
    ("Red dresses below 40 dollars", intent("dress", color="red", max=40, currency="USD")),
    ("RED DRESS???", intent("dress", color="red")),
    ("redd dress", intent("dress", keywords=["redd"])),  # a typo stays, and still filters
    ("dres red", intent(color="red", keywords=["dres"])),
    ("Please find me a cotton T-shirt, size L, under $20!",
     intent("t-shirt", material="cotton", size="L", max=20, currency="USD")),
    ("£15 tee", intent("t-shirt", max=15, currency="GBP")),
    ("bluetooth speaker less than 30 quid", intent("speaker", style="bluetooth", max=30, currency="GBP")),
    ("grey wool rug under 200 dollars", intent("rug", color="grey", material="wool", max=200, currency="USD")),
    ("€30 silk scarf", intent("scarf", material="silk", max=30, currency="EUR")),
    ("silk scarves 30 EUR", intent("scarf", material="silk", max=30, currency="EUR")),
    ("usd 40 mug", intent("mug", max=40, currency="USD")),
    ("¥5000 watch", intent("watch", max=5000, currency="JPY")),
    ("gift for her under 50", intent(gender="women", max=50, keywords=["gift"])),
    ("laptop 16gb ram 512gb ssd under 1.5k",
     intent("laptop", capacity=["16GB", "512GB"], max=1500, keywords=["ram", "ssd"])),
    # a floor, a range, about a price
    ("cashmere jumper over £100", intent("sweater", material="cashmere", min=100, currency="GBP")),
    ("gold necklace at least $500", intent("necklace", color="gold", min=500, currency="USD")),
    ("nike sneakers $20-$50", intent("sneakers", brand="nike", min=20, max=50, currency="USD")),
    ("between 20 and 50 euros cotton shirt",
     intent("shirt", material="cotton", min=20, max=50, currency="EUR")),
    ("wool sweater from 30 to 80 EUR", intent("sweater", material="wool", min=30, max=80, currency="EUR")),
    ("summer dress by zara 20-40", intent("dress", style="summer", brand="zara", min=20, max=40)),
    ("denim jacket around $80", intent("jacket", material="denim", min=64, max=96, currency="USD")),
    ("running shoes from 60 to 120 dollars, lowest price first",
     intent("shoes", style="running", min=60, max=120, currency="USD", order="price_asc")),
    # orderings
    ("most expensive leather handbag", intent("bag", material="leather", order="price_desc")),
    ("newest adidas trainers", intent("sneakers", brand="adidas", order="newest")),
    ("latest samsung phone", intent("phone", brand="samsung", order="newest")),
    ("best rated wireless earbuds under 100",
     intent("earbuds", style="wireless", max=100, order="rating")),
    ("top-rated coffee maker", intent("coffee maker", order="rating")),
    ("bestselling air fryer", intent("air fryer", order="popular")),
    ("premium noise cancelling headphones", intent("headphones", style="noise cancelling", order="price_desc")),
    ("cheap phone case", intent("case", style="phone", order="price_asc")),
    ("sort by price high to low leather wallet", intent("wallet", material="leather", order="price_desc")),
    # sizes
    ("show me women's running shoes size 8", intent("shoes", gender="women", style="running", size="8")),
    ("mens leather boots size 10.5", intent("boots", gender="men", material="leather", size="10.5")),
    ("light blue t-shirt XL", intent("t-shirt", color="light blue", size="XL")),
    ("Levi's 501 jeans 32x34", intent("jeans", brand="levi's", size="32x34", keywords=["501"])),
    ("women\u2019s wide leg trousers 28 x 30", intent("pants", gender="women", fit="wide leg", size="28x30")),
    ("blue jeans size 32", intent("jeans", color="blue", size="32")),
    ("waterproof hiking boots eu 42", intent("boots", style=["waterproof", "hiking"], size="EU 42")),
    ("kids rain boots size 12", intent("boots", gender="kids", style="rain", size="12")),
    ("yoga leggings xs", intent("leggings", style="yoga", size="XS")),
    ("hoodie size m please", intent("hoodie", size="M")),
    ("ladies' maxi dress in burgundy, medium",
     intent("dress", gender="women", style="maxi", color="burgundy", size="M")),
    ("samsung 65 inch 4k tv", intent("tv", brand="samsung", size="65 inch", style="4k")),
    # colours, materials, brands, who it is for
    ("navy blue blazer for men", intent("blazer", color="navy blue", gender="men")),
    ("black and white converse sneakers", intent("sneakers", color=["black", "white"], brand="converse")),
    ("girls pink sandals", intent("sandals", gender="girls", color="pink")),
    ("the north face jacket for men", intent("jacket", brand="the north face", gender="men")),
    ("slim fit chinos in khaki", intent("pants", fit="slim", color="khaki")),
    ("linen pants for summer", intent("pants", material="linen", style="summer")),
    ("emerald velvet sofa", intent("sofa", color="emerald", material="velvet")),
    ("ikea oak desk", intent("desk", brand="ikea", material="oak")),
    ("black dress shoes by clarks", intent("shoes", color="black", style="dress", brand="clarks")),
    ("iphone 15 case", intent("case", keywords=["iphone", "15"])),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES, ids=[q for q, _ in QUERIES])
def test_parse_query(query, expected):
    assert parse_query(query) == expected


def test_table_is_large_and_distinct():
    queries = [q for q, _ in QUERIES]
    assert len(queries) >= 40 and len(set(queries)) == len(queries)


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_empty_query(query):
    with pytest.raises(QueryError, match=re.escape(f"The query {query!r} is empty")):
        parse_query(query)


@pytest.mark.parametrize("query", ["find me the", "Show me, please!", "I want the cheapest"])
def test_only_stop_words(query):
    with pytest.raises(QueryError, match=re.escape(f"The query {query!r} names nothing to look for")):
        parse_query(query)


def test_contradictory_price():
    with pytest.raises(QueryError, match=r"'shoes over 100 under 50' asks for a price of at least 100 and at most 50"):
        parse_query("shoes over 100 under 50")


def test_query_error_is_a_value_error():
    assert issubclass(QueryError, ValueError)


def test_missing_library_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m.startswith("scrapy_checkpoint.queries")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "price_parser", None)  # as if not installed
    with pytest.raises(ImportError, match=re.escape("pip install 'scrapy-checkpoint[query]'")):
        importlib.import_module("scrapy_checkpoint.queries")
