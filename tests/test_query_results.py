"""Query results: which items answer a shopping query, once per site, grouped and ranked as asked."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone

import pytest
from pydantic import ValidationError

from scrapy_checkpoint.models import ParsedIntent
from scrapy_checkpoint.queries import (
    FieldMap,
    QueryResult,
    aggregate,
    match,
    parse_price,
    parse_query,
)


def matches(query, item, **kwargs):
    """Whether *item* answers the shopping *query*."""
    return match(item, parse_query(query), **kwargs) is not None


def titles(results):
    return [r.title for r in results]


# -- product type ---------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "expected"), [
    ({"title": "Summer Favourite", "category": "Dresses"}, True),  # the field names it
    ({"title": "Summer Favourite", "type": "dress"}, True),
    ({"title": "Summer Favourite", "product_type": ["Women", "Dresses & Skirts"]}, True),
    ({"title": "Summer Favourite", "category": "Women > Skirts"}, False),
    ({"title": "Red Dress", "category": "Skirts"}, False),  # a field that says otherwise wins
    ({"title": "Red Dress", "category": "Clothing"}, True),  # a field with no product: the title
    ({"title": "Red Dress"}, True),
    ({"title": "Floral Maxi Dress with Pockets"}, True),
    ({"title": "Dresses, pack of 2"}, True),  # plural
    ({"title": "Silk Evening Gown"}, True),  # another word for it
    ({"title": "T-Shirt Dress"}, True),  # a t-shirt dress is a dress
    ({"title": "Black Leather Dress Shoes"}, False),  # ...dress shoes are shoes
    ({"title": "Dress Shirt, slim fit"}, False),
    ({"title": "Belt for a summer dress"}, False),  # what it goes with is not what it is
    ({"title": "Address book"}, False),  # words, not letters
    ({"name": "Red Dress"}, True),  # the title under another conventional name
    ({"product_name": "Red Dress"}, True),
    ({"sku": "D-1"}, False),  # nothing says what it is
])
def test_product_type(item, expected):
    assert matches("dress", item) is expected


@pytest.mark.parametrize(("query", "title", "expected"), [
    ("jumper", "Wool Sweater", True),
    ("sweater", "Cosy Jumper", True),
    ("sneakers", "Running Trainers", True),
    ("sneakers", "Classic Sneaker", True),
    ("bag", "Leather Tote", True),
    ("bag", "Laptop Bag for 15 inch Laptop", True),
    ("laptop", "Laptop Bag for 15 inch Laptop", False),
    ("shoes", "Black Leather Dress Shoes", True),
    ("dress shoes", "Black Leather Dress Shoes", True),
    ("dress shoes", "Black Leather Shoes", False),  # "dress" is their style
    ("t-shirt", "Cotton Tee", True),
    ("t-shirt", "Basic T-Shirts", True),
    ("coffee maker", "Drip Coffee Machine", True),
])
def test_product_type_words(query, title, expected):
    assert matches(query, {"title": title}) is expected


# -- attributes -----------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "item", "expected"), [
    ("red dress", {"title": "Red Dress"}, True),
    ("red dress", {"title": "RED DRESS"}, True),
    ("red dress", {"title": "Dress", "color": "Red"}, True),
    ("red dress", {"title": "Dress", "colour": "red"}, True),
    ("red dress", {"title": "Red Dress", "color": "Blue"}, False),  # the field wins over the title
    ("red dress", {"title": "Dress", "color": "Red/Black"}, True),
    ("red dress", {"title": "Dress", "color": ["black", "red"]}, True),  # a list: any element
    ("red dress", {"title": "Dress", "color": ["black", "white"]}, False),
    ("red dress", {"title": "Red Dress", "color": "As pictured"}, True),  # no colour in it: the title
    ("red dress", {"title": "Blue Dress", "color": "As pictured"}, False),
    ("red dress", {"title": "Reddish Dress"}, False),
    ("red dress", {"title": "Dress"}, False),
    # grey and gray are one colour
    ("grey dress", {"title": "Gray Dress"}, True),
    ("gray dress", {"title": "Grey Dress"}, True),
    ("gray dress", {"title": "Dress", "color": "Light Grey"}, True),
    ("grey dress", {"title": "Dress", "color": "lightgray"}, True),
    # navy is navy blue; a shade of blue is blue, not the other way round
    ("navy dress", {"title": "Dress", "color": "Navy Blue"}, True),
    ("navy blue blazer", {"title": "Navy Blazer"}, True),
    ("navy blue blazer", {"title": "Blue Blazer"}, False),
    ("blue jeans", {"title": "Jeans", "color": "Navy"}, True),
    ("blue jeans", {"title": "Jeans", "color": "Light Blue"}, True),
    ("light blue shirt", {"title": "Shirt", "color": "Blue"}, False),
    ("light blue shirt", {"title": "Shirt", "color": "lightblue"}, True),
    # several values: all of them
    ("black and white converse sneakers", {"title": "Converse Chuck Taylor Sneakers, Black/White"}, True),
    ("black and white converse sneakers", {"title": "Converse Chuck Taylor Sneakers, Black"}, False),
    # sizes: a field, a list of sizes, words for letters
    ("t-shirt size M", {"title": "Tee", "sizes": ["S", "M", "L"]}, True),
    ("t-shirt size M", {"title": "Tee", "sizes": ["S", "L", "XL"]}, False),
    ("t-shirt size M", {"title": "Tee", "size": "Medium"}, True),
    ("sweater size xl", {"title": "Sweater", "size": "L"}, False),
    ("sweater size xl", {"title": "Sweater", "size": "Extra Large"}, True),
    ("running shoes size 8", {"title": "Running Shoes", "size": [7, 8, 9]}, True),
    ("running shoes size 8", {"title": "Running Shoes", "size": 8.0}, True),
    ("running shoes size 8", {"title": "Running Shoes", "size": [7, 9]}, False),
    # materials, brands, who it is for
    ("leather bag", {"title": "Leather Handbag"}, True),
    ("leather bag", {"title": "Handbag", "material": "Genuine leather"}, True),
    ("leather bag", {"title": "Leather-look Handbag", "material": "Polyester"}, False),
    ("wool sweater", {"title": "Sweater", "material": "80% wool, 20% nylon"}, True),
    ("north face jacket", {"title": "Jacket", "brand": "The North Face"}, True),
    ("the north face jacket", {"title": "Jacket", "brand": "North Face"}, True),
    ("north face jacket", {"title": "The North Face Nuptse Jacket"}, True),
    ("levis jeans", {"title": "501 Jeans", "brand": "Levi's"}, True),
    ("nike sneakers", {"title": "Air Max Sneakers", "brand": "Adidas"}, False),
    ("women's sneakers", {"title": "Sneakers", "gender": "Women"}, True),
    ("women's sneakers", {"title": "Sneakers", "gender": "Men"}, False),
    ("women's sneakers", {"title": "Sneakers", "gender": "Unisex"}, True),
    ("women's sneakers", {"title": "Womens Running Sneakers"}, True),
    ("women's sneakers", {"title": "Men's Running Sneakers"}, False),
])
def test_attributes(query, item, expected):
    assert matches(query, item) is expected


@pytest.mark.parametrize("title", [
    "Zara Floral Red Maxi Dress #123", "Women's 100% Cotton T-Shirt", "Levi's 501 Jeans 32x34",
    'Samsung 65" 4K TV', "Nike Air Max 90 - Size 10.5", "Robe d’été rouge – 49,99 €",
    "H&M Slim-Fit Top-Rated Shirt", "$49.99 Dress, 2 for 1",
])
def test_titles_are_read_as_queries_are(title):
    """The same words as the query's tokenizer, however it is sped up for titles."""
    from scrapy_checkpoint.queries import tokenize
    from scrapy_checkpoint.queries.results import _Item

    assert _Item({}, title, frozenset()).tokens == tokenize(title)


def test_matched_names_what_the_item_answered():
    item = {"title": "Nike Air Max Running Shoes", "color": "red", "price": 90}
    assert match(item, parse_query("red nike running shoes")) == {
        "product_type": "shoes", "color": "red", "brand": "nike", "style": "running",
    }
    assert match({"title": "Clear Case for iPhone 15"}, parse_query("iphone 15 case")) == {
        "product_type": "case", "keywords": ["iphone", "15"],
    }


# -- price ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("price", "expected"), [
    (50, True), ("$50.00", True), (49.99, True), (0, True), ("50.01", False), (51, False),
])
def test_price_at_most_is_inclusive(price, expected):
    assert matches("dress under $50", {"title": "Dress", "price": price}) is expected


@pytest.mark.parametrize(("price", "expected"), [
    (19.99, False), (20, True), (35, True), (50, True), (50.5, False),
])
def test_price_between_is_inclusive(price, expected):
    assert matches("dress between $20 and $50", {"title": "Dress", "price": price}) is expected


def test_price_at_least():
    assert not matches("cashmere jumper over £100", {"title": "Cashmere Jumper", "price": "£99.99"})
    assert matches("cashmere jumper over £100", {"title": "Cashmere Jumper", "price": "£100"})


@pytest.mark.parametrize("price", [None, "", "Call for price", "sold out", -5, "-5", True])
def test_no_usable_price(price):
    item = {"title": "Red Dress", "price": price}
    assert not matches("red dress under $50", item)  # a price bound: it must have a price
    assert not matches("cheapest red dress", item)  # so must a price ordering
    assert matches("red dress", item)  # otherwise it is still a red dress


@pytest.mark.parametrize(("item", "expected"), [
    ({"price": 45, "currency": "USD"}, True),
    ({"price": "$45"}, True),
    ({"price": 45}, True),  # no currency said: taken to be the query's
    ({"price": 45, "currency": "EUR"}, False),  # another currency and no rate: not comparable
    ({"price": "45,00 €"}, False),
    ({"price": "£45"}, False),
])
def test_price_in_another_currency(item, expected):
    assert matches("dress under $50", {"title": "Dress", **item}) is expected


@pytest.mark.parametrize(("item", "expected"), [
    ({"price": "45,00 €"}, True),  # 49.50 dollars
    ({"price": 46, "currency": "EUR"}, False),  # 50.60 dollars
    ({"price": 40, "currency": "GBP"}, True),  # 50.00 dollars: the bound is inclusive
    ({"price": 41, "currency": "GBP"}, False),
    ({"price": 5000, "currency": "JPY"}, False),  # no rate for it
])
def test_price_in_another_currency_with_rates(item, expected):
    rates = {"EUR": 1.1, "GBP": 1.25}
    assert matches("dress under $50", {"title": "Dress", **item}, rates=rates) is expected


def test_a_query_without_currency_compares_amounts():
    assert matches("dress under 50", {"title": "Dress", "price": "45,00 €"})
    assert matches("dress under 50", {"title": "Dress", "price": "£45"})
    assert not matches("dress under 50", {"title": "Dress", "price": "55 EUR"})


PRICES = [
    ("$49.99", None, (49.99, "USD")),
    ("49,99 €", None, (49.99, "EUR")),
    ("EUR 30", None, (30.0, "EUR")),
    ("30 EUR", None, (30.0, "EUR")),
    ("1.299,00", None, (1299.0, None)),
    ("1,299.00", None, (1299.0, None)),
    ("1 299,00 €", None, (1299.0, "EUR")),
    ("€1.234,56", None, (1234.56, "EUR")),
    ("£1,299", None, (1299.0, "GBP")),
    ("£ 12.50", None, (12.5, "GBP")),
    ("¥5000", None, (5000.0, "JPY")),
    ("US$ 12", None, (12.0, "USD")),
    ("CHF 1'299.50", None, (1299.5, "CHF")),
    ("R$ 59,90", None, (59.9, "BRL")),
    ("from $19", None, (19.0, "USD")),
    ("49.99", None, (49.99, None)),
    (" 49.99 ", None, (49.99, None)),
    (49.99, None, (49.99, None)),
    (30, None, (30.0, None)),
    ("49.99", "usd", (49.99, "USD")),
    ("$49.99", "CAD", (49.99, "CAD")),  # the currency field wins over the sign
    (30, "€", (30.0, "EUR")),
    ("Call for price", None, (None, None)),
    ("", "EUR", (None, "EUR")),
    (None, None, (None, None)),
    (-5, None, (None, None)),
    ("-5", None, (None, None)),
    (True, None, (None, None)),
    (float("nan"), None, (None, None)),
]


@pytest.mark.parametrize(("price", "currency", "expected"), PRICES, ids=[repr(p[:2]) for p in PRICES])
def test_parse_price(price, currency, expected):
    assert parse_price(price, currency) == expected


@pytest.mark.parametrize("sign", ["", "$", "€", "£", "¥", "EUR", "USD", "usd", "abc", "US$", "kr"])
def test_parse_price_reads_common_forms_as_price_parser_does(sign):
    """Common forms are read without price-parser, for speed: never differently from it."""
    from price_parser import Price

    for amount in ["0", "49", "49.9", "49.99", "49,99", "1299.00", "100,00", "12.345", "1,299", "1.299,00"]:
        for text in [f"{sign}{amount}", f"{sign} {amount}", f"{amount}{sign}", f"{amount} {sign}"]:
            expected = Price.fromstring(text)
            amount_read, currency = parse_price(text)
            assert amount_read == expected.amount_float, text
            assert currency == parse_price("1", expected.currency)[1], text


# -- keywords -------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "expected"), [
    ({"title": "Clear Case for iPhone 15"}, True),
    ({"title": "IPHONE 15 CASE"}, True),
    ({"title": "Clear Case for iPhone 14"}, False),  # every keyword
    ({"title": "Clear Case for iPhone 15 Pro"}, True),
    ({"title": "Clear Case for iPhone 150"}, False),  # words, not letters
    ({"title": "Clear Case", "description": "Fits the iPhone 15."}, True),  # another text field
    ({"title": "Clear Case", "models": ["iPhone 14", "iPhone 15"]}, True),
    ({"title": "Clear Case", "url": "https://shop.example/iphone-15-case"}, False),  # not the URL
    ({"title": "Clear Case for iPhone 14", "price": 15}, False),  # nor the price
    ({"title": "Clear Case for iPhone 14", "price": "15 EUR"}, False),
    ({"title": "Clear Case for iPhone", "rating": "15"}, False),
    ({"title": "Clear Case for iPhone", "tags": ["15", "clear"]}, True),
])
def test_keywords(item, expected):
    assert matches("iphone 15 case", item) is expected


def test_keyword_singular_or_plural():
    assert matches("gift", {"title": "Gifts for gardeners"})
    assert matches("gifts", {"title": "The perfect gift"})
    assert not matches("gift", {"title": "Gifted"})


# -- aggregation ----------------------------------------------------------------------------


def test_aggregate_the_issue_example():
    shop_a = [
        {"title": "Red Wrap Dress", "price": "$45.00", "url": "https://a.example/1", "sku": "A1"},
        {"title": "Red Maxi Dress", "price": "$59.00", "url": "https://a.example/2", "sku": "A2"},
        {"title": "Blue Wrap Dress", "price": "$25.00", "url": "https://a.example/3", "sku": "A3"},
        {"title": "Red Skirt", "price": "$15.00", "url": "https://a.example/4", "sku": "A4"},
    ]
    shop_b = [
        {"name": "Scarlet Red Gown", "price_amount": 39.5, "currency": "USD", "link": "https://b.example/g"},
        {"name": "Red Dress", "price_amount": 40, "currency": "EUR", "link": "https://b.example/d"},
        {"name": "Red Sundress", "price_amount": 20, "currency": "USD", "link": "https://b.example/s"},
    ]
    intent = parse_query("find cheapest red dress under $50")
    results = aggregate(intent, [("a.example", shop_a), ("b.example", shop_b)])
    assert results == [
        QueryResult(title="Scarlet Red Gown", price=39.5, currency="USD", url="https://b.example/g",
                    site="b.example", matched={"product_type": "dress", "color": "red"},
                    converted_price=39.5),
        QueryResult(title="Red Wrap Dress", price=45.0, currency="USD", url="https://a.example/1",
                    site="a.example", matched={"product_type": "dress", "color": "red"},
                    converted_price=45.0, sku="A1"),
    ]
    with_rates = aggregate(intent, [("a.example", shop_a), ("b.example", shop_b)], rates={"EUR": 1.1})
    assert [(r.title, r.price, r.currency, r.converted_price) for r in with_rates] == [
        ("Scarlet Red Gown", 39.5, "USD", 39.5),
        ("Red Dress", 40.0, "EUR", 44.0),
        ("Red Wrap Dress", 45.0, "USD", 45.0),
    ]


def test_result_keeps_a_few_item_fields():
    item = {"title": "Red Dress", "price": "30", "url": " https://a.example/1 ", "sku": 1001, "brand": "Zara",
            "listed": date(2026, 3, 1), "rating": "4.5/5", "description": "long text " * 100}
    [result] = aggregate(parse_query("red dress"), [("a.example", [item])])
    assert result.model_dump() == {
        "title": "Red Dress", "price": 30.0, "currency": None, "url": "https://a.example/1",
        "site": "a.example",
        "matched": {"product_type": "dress", "color": "red"}, "group": None, "converted_price": None,
        "sku": "1001", "brand": "Zara", "listed": "2026-03-01", "rating": 4.5,
    }


def test_an_item_without_price_is_kept_when_price_does_not_matter():
    items = [{"title": "Red Dress A", "url": "1"}, {"title": "Red Dress B", "url": "2", "price": 10}]
    results = aggregate(parse_query("red dress"), [("a.example", items)])
    assert [(r.title, r.price) for r in results] == [("Red Dress A", None), ("Red Dress B", 10.0)]


def test_same_product_twice_on_one_site_is_kept_once():
    items = [
        {"title": "Red Dress", "price": 30, "url": "https://a.example/red", "sku": "R1"},
        {"title": "Red Dress", "price": 30, "url": "https://a.example/red"},  # listed in two categories
        {"title": "Red Dress (sale)", "price": 25, "url": "https://a.example/red?ref=sale", "sku": "R1"},
        {"title": "Red Dress", "price": 32, "url": "https://a.example/red-2", "sku": "R2"},  # another one
        {"title": "Red Dress", "price": 35},  # nothing to tell: kept
    ]
    results = aggregate(parse_query("red dress"), [("a.example", items)])
    assert [(r.price, r.url) for r in results] == [
        (35.0, None), (30.0, "https://a.example/red"), (32.0, "https://a.example/red-2"),
    ]


def test_same_site_in_two_sources_is_one_site():
    item = {"title": "Red Dress", "price": 30, "url": "https://a.example/red"}
    results = aggregate(parse_query("red dress"), [("a.example", [item]), ("a.example", [dict(item)])])
    assert len(results) == 1


def test_same_product_on_several_sites_is_kept_per_site_and_grouped():
    a = [
        {"title": "Nike Air Max 90 Sneakers", "brand": "Nike", "price": 120, "url": "https://a.example/am90"},
        {"title": "Adidas Samba Sneakers", "brand": "Adidas", "price": 100, "url": "https://a.example/samba",
         "gtin": "04066749999"},
        {"title": "Classic Sneakers", "brand": "Vans", "price": 60, "url": "https://a.example/classic"},
    ]
    b = [
        # the brand apart from the title, in capitals
        {"title": "AIR MAX 90 SNEAKERS", "brand": "NIKE", "price": 110, "url": "https://b.example/1"},
        {"title": "Samba OG Trainers", "brand": "adidas", "price": 95, "url": "https://b.example/2",
         "ean": "4066749999"},  # the same GTIN, another title
        # the same title, another brand
        {"title": "Classic Sneakers", "brand": "Converse", "price": 55, "url": "https://b.example/3"},
    ]
    c = [{"title": "Nike Air Max 90 Sneakers", "brand": "Nike", "price": 130, "url": "https://c.example/x"}]
    results = aggregate(parse_query("sneakers"), [("a.example", a), ("b.example", b), ("c.example", c)])
    groups = {(r.site, r.url): r.group for r in results}
    assert len(results) == 7  # once per site, none dropped
    air_max = {groups["a.example", "https://a.example/am90"], groups["b.example", "https://b.example/1"],
               groups["c.example", "https://c.example/x"]}
    assert len(air_max) == 1 and None not in air_max
    samba = {groups["a.example", "https://a.example/samba"], groups["b.example", "https://b.example/2"]}
    assert len(samba) == 1 and None not in samba and samba != air_max
    assert groups["a.example", "https://a.example/classic"] is None
    assert groups["b.example", "https://b.example/3"] is None


def test_same_sku_on_two_sites_is_grouped():
    a = [{"title": "Linen Shirt", "sku": "LS-100", "price": 40, "url": "https://a.example/1"}]
    b = [{"title": "Shirt in linen", "sku": "ls-100", "price": 42, "url": "https://b.example/1"}]
    results = aggregate(parse_query("linen shirt"), [("a.example", a), ("b.example", b)])
    assert [r.group for r in results] == ["sku::ls-100", "sku::ls-100"]


def test_group_key_does_not_depend_on_the_order_of_sites():
    a = [{"title": "Air Max 90 Sneakers", "brand": "Nike", "sku": "AM90", "price": 120, "url": "a"}]
    b = [{"title": "Nike Air Max 90 Sneakers", "brand": "Nike", "price": 110, "url": "b"}]
    one = aggregate(parse_query("sneakers"), [("a", a), ("b", b)])
    other = aggregate(parse_query("sneakers"), [("b", b), ("a", a)])
    assert {r.group for r in one} == {r.group for r in other} == {"sku:nike:am90"}


# -- ordering -------------------------------------------------------------------------------


def shop(*items):
    return [("s", [dict(item, url=f"https://s.example/{i}") for i, item in enumerate(items)])]


def test_cheapest_first_with_ties_by_title_then_site_then_url():
    sources = [
        ("b.example", [{"title": "Dress B", "price": 20, "url": "https://b.example/2"},
                       {"title": "Dress A", "price": 20, "url": "https://b.example/1"}]),
        ("a.example", [{"title": "Dress A", "price": 20, "url": "https://a.example/9"},
                       {"title": "Dress C", "price": 10, "url": "https://a.example/3"},
                       {"title": "dress a", "price": 20, "url": "https://a.example/4"}]),
    ]
    results = aggregate(parse_query("cheapest dress"), sources)
    assert [(r.title, r.site, r.url) for r in results] == [
        ("Dress C", "a.example", "https://a.example/3"),
        ("Dress A", "a.example", "https://a.example/9"),
        ("Dress A", "b.example", "https://b.example/1"),
        ("dress a", "a.example", "https://a.example/4"),
        ("Dress B", "b.example", "https://b.example/2"),
    ]


def test_cheapest_first_compares_converted_prices():
    sources = shop({"title": "Dress A", "price": "30 €"}, {"title": "Dress B", "price": "$32"},
                   {"title": "Dress C", "price": "$34"})
    results = aggregate(parse_query("dress under $50"), sources, rates={"EUR": 1.1})  # A is $33
    assert titles(results) == ["Dress B", "Dress A", "Dress C"]


def test_a_price_range_orders_cheapest_first():
    sources = shop({"title": "Dress A", "price": 40}, {"title": "Dress B", "price": 20},
                   {"title": "Dress C", "price": 30})
    assert titles(aggregate(parse_query("dress under 50"), sources)) == ["Dress B", "Dress C", "Dress A"]


def test_most_expensive_first():
    sources = shop({"title": "Dress A", "price": 40}, {"title": "Dress B", "price": 90},
                   {"title": "Dress D", "price": 40}, {"title": "Dress C", "price": 40})
    assert titles(aggregate(parse_query("most expensive dress"), sources)) == [
        "Dress B", "Dress A", "Dress C", "Dress D",
    ]


def test_newest_first():
    sources = shop(
        {"title": "Dress A", "listed": "2026-01-15"},
        {"title": "Dress B", "listed": "2026-03-01T10:00:00Z"},
        {"title": "Dress C"},  # never says: last
        {"title": "Dress D", "date": datetime(2026, 2, 1, tzinfo=timezone.utc)},
        {"title": "Dress E", "created": date(2026, 3, 1)},
        {"title": "Dress F", "listed": "2026-01-15"},
        {"title": "Dress G", "listed": "not a date"},
        {"title": "Dress H", "listed": 1767225600},  # 2026-01-01, in seconds
    )
    assert titles(aggregate(parse_query("newest dress"), sources)) == [
        "Dress B", "Dress E", "Dress D", "Dress A", "Dress F", "Dress H", "Dress C", "Dress G",
    ]


def test_best_rated_first():
    sources = shop({"title": "Dress A", "rating": 4.1}, {"title": "Dress B", "rating": "4.8"},
                   {"title": "Dress C"}, {"title": "Dress D", "rating": 4.8},
                   {"title": "Dress E", "rating": 3})
    assert titles(aggregate(parse_query("best rated dress"), sources)) == [
        "Dress B", "Dress D", "Dress A", "Dress E", "Dress C",
    ]


def test_most_popular_first_by_reviews_then_rating():
    sources = shop({"title": "Dress A", "review_count": 12, "rating": 3.0},
                   {"title": "Dress B", "review_count": 250, "rating": 4.0},
                   {"title": "Dress C", "rating": 5.0},  # no count: after those that have one, by rating
                   {"title": "Dress D", "sales": 12, "rating": 4.5},
                   {"title": "Dress E", "rating": 4.0})
    assert titles(aggregate(parse_query("most popular dress"), sources)) == [
        "Dress B", "Dress D", "Dress A", "Dress C", "Dress E",
    ]


def test_most_popular_without_counts_is_best_rated():
    sources = shop({"title": "Dress A", "rating": 3.0}, {"title": "Dress B", "rating": 4.5})
    assert titles(aggregate(parse_query("most popular dress"), sources)) == ["Dress B", "Dress A"]


def test_no_order_asked_is_by_title():
    sources = shop({"title": "Dress B", "price": 10}, {"title": "Dress A", "price": 50})
    assert titles(aggregate(parse_query("dress"), sources)) == ["Dress A", "Dress B"]


# -- limit, fields, arguments ---------------------------------------------------------------


def test_limit_cuts_after_ordering():
    sources = shop(*({"title": f"Dress {n}", "price": 100 - n} for n in range(10)))
    cheapest = aggregate(parse_query("cheapest dress"), sources, limit=3)
    assert titles(cheapest) == ["Dress 9", "Dress 8", "Dress 7"]
    assert aggregate(parse_query("cheapest dress"), sources, limit=0) == []
    assert len(aggregate(parse_query("cheapest dress"), sources, limit=50)) == 10


@pytest.mark.parametrize("limit", [-1, 2.5, True, "3"])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match=re.escape(f"Query limit ({limit!r}) must be a whole number")):
        aggregate(parse_query("dress"), [], limit=limit)


def test_custom_field_map():
    fields = FieldMap({"price": "cost", "title": ["heading", "label"], "color": "shade", "type": "kind"})
    items = [
        {"heading": "Summer Favourite", "kind": "Dresses", "shade": "Crimson Red", "cost": "€25", "url": "1"},
        {"label": "Red Dress", "cost": 30, "price": 99, "url": "2"},  # the user's name first
        {"title": "Red Dress", "price": 20, "url": "3"},  # the conventional names still work
        {"heading": "Red Dress", "shade": "blue", "cost": 10, "url": "4"},
    ]
    results = aggregate(parse_query("cheapest red dress"), [("s", items)], fields=fields)
    assert [(r.title, r.price, r.currency) for r in results] == [
        ("Red Dress", 20.0, None), ("Summer Favourite", 25.0, "EUR"), ("Red Dress", 30.0, None),
    ]
    assert match({"heading": "Red Dress", "shade": "red"}, parse_query("red dress"), fields) is not None
    assert match({"heading": "Red Dress", "shade": "red"}, parse_query("red dress")) is None


def test_field_map_for_an_attribute_without_a_conventional_name():
    intent, fields = parse_query("women's sneakers"), FieldMap({"gender": "department"})
    assert match({"title": "Sneakers", "department": "Women"}, intent, fields)
    assert match({"title": "Sneakers", "department": "Men"}, intent, fields) is None


@pytest.mark.parametrize("mapping", [{"price": 5}, {"price": ""}, {"price": []}, {"price": ["cost", None]}])
def test_bad_field_map(mapping):
    message = f"Query field map entry 'price': {mapping['price']!r} must name"
    with pytest.raises(ValueError, match=re.escape(message)):
        FieldMap(mapping)


@pytest.mark.parametrize("rates", [{"EUR": 0}, {"EUR": -1.1}, {"euro": 1.1}, {"EUR": "1.1"}])
def test_bad_rates(rates):
    with pytest.raises(ValueError, match="Query rates entry .* must be an ISO 4217 code and the positive"):
        aggregate(parse_query("dress under $50"), [], rates=rates)


def test_rates_codes_in_any_case():
    assert matches("dress under $50", {"title": "Dress", "price": "45 €"}, rates={"eur": 1.1})


def test_an_intent_without_requirements_matches_everything_priced_within():
    intent = ParsedIntent(price_range={"max": 10})
    items = [{"title": "Mug", "price": 8, "url": "1"}, {"title": "Pen", "price": 12, "url": "2"}]
    results = aggregate(intent, [("s", items)])
    assert titles(results) == ["Mug"]


def test_results_are_frozen_and_json_ready():
    [result] = aggregate(parse_query("black and white converse sneakers"),
                         [("s", [{"title": "Converse Sneakers", "color": "black/white", "price": "$60"}])])
    with pytest.raises(ValidationError, match="frozen"):
        result.price = 1
    assert json.loads(json.dumps(result.model_dump(mode="json")))["matched"] == {
        "product_type": "sneakers", "color": ["black", "white"], "brand": "converse",
    }
