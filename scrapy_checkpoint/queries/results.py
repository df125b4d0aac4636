"""Query results: the items of several sites matched to a ParsedIntent, de-duplicated, grouped and ranked."""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timezone
from typing import Any

from price_parser import Price
from pydantic import BaseModel, ConfigDict, Field

from ..models import ParsedIntent
from .intent import (
    _PRODUCTS,
    _SHORT_SIZES,
    _TOKEN,
    BRANDS,
    COLOUR_MODIFIERS,
    CURRENCIES,
    FITS,
    GENDERS,
    LETTER_SIZES,
    MATERIALS,
    UNITS,
    Vocabulary,
    _builtin_reads,
    _is_colour,
    _lookup,
    tokenize,
)

__all__ = ["FieldMap", "QueryResult", "aggregate", "match", "parse_price", "prefilter", "vocabulary_from_items"]


class QueryResult(BaseModel):
    """One product of one site that answers a query (``model_dump(mode="json")``: its JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str
    #: In the item's currency; None when the item has no usable price (it then sorts last).
    price: float | None
    #: ISO 4217 code, from the item's currency field or its price string; None if neither says.
    currency: str | None
    url: str | None
    site: str
    #: What of the intent the item matched: product_type, its attributes, keywords.
    matched: dict[str, Any] = Field(default_factory=dict)
    #: Shared by the results that are the same product (on several sites); None when alone.
    group: str | None = None
    #: The price in the query's currency (converted with the rates given), when the query
    #: names a currency: what price bounds and price orderings compared.
    converted_price: float | None = None
    sku: str | None = None
    brand: str | None = None
    listed: str | None = None
    rating: float | None = None


# -- item fields ----------------------------------------------------------------------------

#: Conventional item field names, the first present wins.
DEFAULT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "price": ("price", "price_amount", "current_price", "sale_price"),
    "currency": ("currency", "price_currency", "currency_code"),
    "title": ("title", "name", "product_name"),
    "url": ("url", "link"),
    "type": ("type", "category", "product_type"),
    "color": ("color", "colour"),
    "size": ("size", "sizes"),
    "brand": ("brand",),
    "material": ("material",),
    "listed": ("listed", "date", "created"),
    "rating": ("rating",),
    #: How many reviewed or bought it: what "most popular" orders by.
    "popularity": ("review_count", "reviews_count", "reviews", "sales", "sales_count", "sold"),
    "sku": ("sku",),
    "gtin": ("gtin", "gtin13", "gtin12", "gtin14", "ean", "upc"),
}


class FieldMap:
    """Which item fields hold what a query looks at: DEFAULT_FIELDS, with the user's names
    first. ``FieldMap({"price": "cost"})`` reads ``cost``, then the conventional names.
    An intent attribute with no entry (gender, style, fit...) is read from the field of its name."""

    __slots__ = ("names",)

    def __init__(self, overrides: Mapping[str, str | Iterable[str]] | None = None) -> None:
        names = dict(DEFAULT_FIELDS)
        for key, value in (overrides or {}).items():
            given = (value,) if isinstance(value, str) else None
            if isinstance(value, (list, tuple)):
                given = tuple(value)
            if not isinstance(key, str) or not given or not all(isinstance(n, str) and n for n in given):
                raise ValueError(
                    f"Query field map entry {key!r}: {value!r} must name an item field, or a "
                    f"list of them, e.g. {{'price': 'cost'}}."
                )
            names[key] = tuple(dict.fromkeys(given + names.get(key, ())))
        self.names: Mapping[str, tuple[str, ...]] = names

    def fields(self, key: str) -> tuple[str, ...]:
        return self.names.get(key, (key,))

    def get(self, item: Mapping[str, Any], key: str) -> Any:
        """The first present value (not None, "" or empty) of the fields of *key* in *item*."""
        return _first(item, self.names.get(key, (key,)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FieldMap) and self.names == other.names

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.names.items() if DEFAULT_FIELDS.get(k) != v}
        return f"FieldMap({changed!r})"


def _first(item: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = item.get(name)
        if value is not None and value != "" and value != [] and value != ():
            return value
    return None


def _strings(value: Any) -> tuple[str, ...]:
    """A field value as the strings it holds: a list gives one per element."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, bool):
        return ()
    if isinstance(value, float):
        return (str(int(value)) if value.is_integer() else str(value),)
    if isinstance(value, int):
        return (str(value),)
    if isinstance(value, (list, tuple)):
        return tuple(s for element in value for s in _strings(element))
    return ()


def _text(value: Any) -> str | None:
    strings = _strings(value)
    return " ".join(strings) if strings else None


# -- prices ---------------------------------------------------------------------------------

#: Currency signs price-parser returns beyond intent.CURRENCIES; "kr" says no one currency.
_SIGNS: Mapping[str, str] = {
    "us$": "USD", "c$": "CAD", "ca$": "CAD", "a$": "AUD", "au$": "AUD", "r$": "BRL",
    "zł": "PLN", "rs": "INR", "chf": "CHF", "fr.": "CHF", "₩": "KRW", "₽": "RUB", "₺": "TRY",
}
_CODE = re.compile(r"[A-Za-z]{3}")
_PLAIN_AMOUNT = re.compile(r"\s*\d+(?:\.\d{1,2})?\s*")
#: The commonest forms ("$49.99", "49,99 €", "30 EUR"), read without price-parser (which
#: reads them the same, ten times slower): no thousands separator, two decimals at most.
_SIMPLE_PRICE = re.compile(
    r"\s*([$€£¥₹]|[A-Z]{3}(?= ))?\s*(\d+)(?:([.,])(\d{1,2}))?\s*([$€£¥₹]|[A-Z]{3})?\s*")


def _currency(sign: Any) -> str | None:
    if not isinstance(sign, str) or not sign.strip():
        return None
    sign = sign.strip()
    code = CURRENCIES.get(sign.lower()) or _SIGNS.get(sign.lower())
    if code is None and _CODE.fullmatch(sign):
        code = sign.upper()
    return code


def parse_price(value: Any, currency: Any = None) -> tuple[float | None, str | None]:
    """An item's price and the ISO code of its currency: "$49.99" is (49.99, "USD"),
    "1.299,00" (1299.0, None). *currency* (the item's currency field) wins over the price
    string's sign. A number is kept; no usable price (none, negative, unreadable) is None."""
    code = _currency(currency)
    if isinstance(value, bool):
        return None, code
    if isinstance(value, (int, float)):
        amount = float(value)
    elif isinstance(value, str):
        if _PLAIN_AMOUNT.fullmatch(value):
            amount = float(value)
        elif (simple := _SIMPLE_PRICE.fullmatch(value)) and not (simple[1] and simple[5]) and (
                (simple[1] or simple[5] or "").lower() in CURRENCIES):
            amount = float(f"{simple[2]}.{simple[4]}" if simple[4] else simple[2])
            code = code or CURRENCIES[(simple[1] or simple[5]).lower()]
        elif value.lstrip().startswith("-"):
            return None, code  # price-parser drops the sign
        else:
            price = Price.fromstring(value)
            if price.amount_float is None:
                return None, code
            amount = price.amount_float
            code = code or _currency(price.currency)
    else:
        return None, code
    if not math.isfinite(amount) or amount < 0:
        return None, code
    return amount, code


# -- what an intent asks of an item ---------------------------------------------------------

_ALNUM = re.compile(r"[^\W_]+")
#: Where a category field lists several kinds: "Dresses & Skirts", "Women > Dresses".
_SEGMENTS = re.compile(r"[,;/|>&+]|\band\b", re.IGNORECASE)
#: Words of a title after which it names what comes with the product: "bag for laptop".
_TITLE_CUTS = frozenset({"with", "for", "w", "featuring", "including", "includes", "incl",
                         "compatible", "plus"})
_PRODUCT_NAMES = frozenset(_PRODUCTS.values())
_PRODUCT_STARTS = frozenset(form[0] for form in _PRODUCTS)


def _needles(forms: Iterable[tuple[str, ...]]) -> tuple[str, ...] | None:
    """Substrings one of which the lowercase text must hold for a form to be among its words:
    the longest run of letters and digits of each form, the shortest that suffice."""
    runs = set()
    for form in forms:
        found = _ALNUM.findall(" ".join(form))
        if not found:
            return None  # a form of symbols only: no cheap test
        runs.add(max(found, key=len))
    return tuple(sorted(r for r in runs if not any(o != r and o in r for o in runs)))


def _has_phrase(tokens: list[str], phrase: tuple[str, ...]) -> bool:
    if len(phrase) == 1:
        return phrase[0] in tokens
    n = len(phrase)
    first = phrase[0]
    return any(tokens[i] == first and tuple(tokens[i:i + n]) == phrase
               for i in range(len(tokens) - n + 1))


def _heads(tokens: list[str]) -> list[str]:
    """The product each run of product words names, its last: "dress shoes" are shoes."""
    heads: list[str] = []
    i, previous_end = 0, -1
    while i < len(tokens):
        n, name = _lookup(_PRODUCTS, tokens, i) if tokens[i] in _PRODUCT_STARTS else (0, None)
        if n:
            if i == previous_end:
                heads[-1] = name
            else:
                heads.append(name)
            i += n
            previous_end = i
        else:
            i += 1
    return heads


def _title_products(title_tokens: list[str]) -> list[str]:
    """The products a title is: what it names before "with", "for"... ("Laptop Bag for 15
    inch Laptop" is a bag)."""
    for i, token in enumerate(title_tokens):
        if token in _TITLE_CUTS and i:
            title_tokens = title_tokens[:i]
            break
    return _heads(title_tokens)


def _field_products(strings: tuple[str, ...]) -> frozenset[str]:
    return frozenset(head for s in strings for segment in _SEGMENTS.split(s)
                     for head in _heads(tokenize(segment)))


def _product_forms(name: str) -> set[tuple[str, ...]]:
    return {form for form, value in _PRODUCTS.items() if value == name}


def _numbers(word: str) -> set[str]:
    """*word* in either number, as far as the regular rules tell: "kimono", "kimonos"."""
    words = {word, word + "s", word + "es"}
    if word.endswith("ies"):
        words.add(word[:-3] + "y")
    elif word.endswith("es"):
        words.update({word[:-2], word[:-1]})
    elif word.endswith("s"):
        words.add(word[:-1])
    if word.endswith("y"):
        words.add(word[:-1] + "ies")
    return {w for w in words if w}


def _phrase(text: str) -> tuple[str, ...]:
    return tuple(tokenize(text))


def _colour_forms(value: str) -> set[tuple[str, ...]]:
    """What counts as the colour *value*: "grey" is also "gray", "navy" is "navy blue", a
    colour is also its shades ("blue" in "light blue", "lightblue", "navy")."""
    spelled = {"gray": "grey", "multicolour": "multicolor"}
    words = [spelled.get(w, w) for w in value.lower().split()]
    if words == ["navy", "blue"]:
        words = ["navy"]
    spellings = {"grey": ("grey", "gray"), "multicolor": ("multicolor", "multicolour")}
    forms = {tuple(p) for p in itertools.product(*(spellings.get(w, (w,)) for w in words))}
    for form in list(forms):
        if len(form) == 2 and form[0] in COLOUR_MODIFIERS:
            forms.add((form[0] + form[1],))  # CSS names: "lightblue", "darkgrey"
        if len(form) == 1:
            forms.update((m + form[0],) for m in COLOUR_MODIFIERS)
    if words == ["blue"]:
        forms.add(("navy",))
    return forms


def _size_forms(value: str) -> set[tuple[str, ...]]:
    forms = {_phrase(value)}
    letters = {**LETTER_SIZES, **_SHORT_SIZES}
    forms.update(_phrase(key) for key, size in letters.items() if size == value)
    if waist := re.fullmatch(r"(\d+)x(\d+)", value):
        forms.add((waist[1], "x", waist[2]))
    if measure := re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z\"]+)", value.lower()):
        number, unit = measure[1], measure[2]
        kind = UNITS.get(unit, (None, None))[1] or UNITS.get(unit.lower(), (None, None))[1]
        for other, (_, template) in UNITS.items():
            if template == kind or other == unit:
                forms.update({_phrase(f"{number} {other}"), _phrase(f"{number}{other}")})
    return {form for form in forms if form}


_ALIASES: Mapping[str, Mapping[str, str]] = {
    "brand": BRANDS, "material": MATERIALS, "gender": GENDERS, "fit": FITS,
}


def _attribute_forms(name: str, value: Any) -> set[tuple[str, ...]]:
    text = _text(value) or ""
    if name == "color":
        return _colour_forms(text)
    if name in ("size", "capacity"):
        return _size_forms(text)
    forms = {_phrase(text)}
    table = _ALIASES.get(name)
    if table is not None:
        forms.update(_phrase(key) for key, canonical in table.items() if canonical == text)
    if name == "gender" and text in ("women", "men"):
        forms.add(("unisex",))
    if name == "style" and text in _PRODUCT_NAMES:  # "dress shoes": style "dress"
        forms.update(_product_forms(text))
    return {form for form in forms if form}


class _Item:
    """An item while it is matched: what several requirements read, computed once. One is
    reused for every item (reset), not to allocate 100,000 of them."""

    __slots__ = ("_lower", "_not_text", "_text_lower", "_text_tokens", "_tokens", "item", "title")

    def __init__(self, item: Mapping[str, Any], title: str, not_text: frozenset[str]) -> None:
        self._not_text = not_text
        self.reset(item, title)

    def reset(self, item: Mapping[str, Any], title: str) -> None:
        self.item = item
        self.title = title
        self._lower: str | None = None
        self._tokens: list[str] | None = None
        self._text_lower: str | None = None
        self._text_tokens: set[str] | None = None

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.title.lower()
        return self._lower

    @property
    def tokens(self) -> list[str]:
        if self._tokens is None:
            title = self.title
            if title.isascii() and "%" not in title and "-" not in title:
                # what tokenize does, without its steps for quotes, dashes and percentages
                self._tokens = _TOKEN.findall(self.lower)
            else:
                self._tokens = tokenize(title)
        return self._tokens

    @property
    def text_lower(self) -> str:
        """Every text field but URLs, prices and such: where keywords are looked for."""
        if self._text_lower is None:
            parts = [s for key, value in self.item.items() if key not in self._not_text
                     for s in (value if isinstance(value, (list, tuple)) else (value,))
                     if isinstance(s, str) and not s.startswith(("http://", "https://"))]
            self._text_lower = "\n".join(parts).lower()
        return self._text_lower

    @property
    def text_tokens(self) -> set[str]:
        if self._text_tokens is None:
            self._text_tokens = set(tokenize(self.text_lower))
        return self._text_tokens


class _Requirement:
    """One thing the intent asks: a field of the item says it, or failing that its title."""

    __slots__ = ("fields", "forms", "memo", "needles")

    def __init__(self, fields: tuple[str, ...], forms: set[tuple[str, ...]]) -> None:
        self.fields = fields
        self.forms = tuple(sorted(forms))
        self.needles = _needles(self.forms)
        self.memo: dict[tuple[str, ...], bool | None] = {}

    def by_field(self, strings: tuple[str, ...]) -> bool | None:
        """True or False when the field says; None when it says nothing this can read."""
        found = self.memo.get(strings, ...)
        if found is ...:
            found = self.read_field(strings)
            self.memo[strings] = found
        return found  # type: ignore[return-value]

    def read_field(self, strings: tuple[str, ...]) -> bool | None:
        return any(_has_phrase(tokenize(s), form) for s in strings for form in self.forms)

    def check(self, ctx: _Item) -> bool | None:
        """True or False when a field says; else False when the title cannot say it, and None
        when it may (by_title tells, at a higher cost)."""
        item = ctx.item
        for name in self.fields:
            value = item.get(name)
            if value is not None and value != "" and value != [] and value != ():
                strings = (value,) if type(value) is str else _strings(value)
                if strings:
                    said = self.by_field(strings)
                    if said is not None:
                        return said
                break
        if self.needles is not None:
            lower = ctx.lower
            for needle in self.needles:
                if needle in lower:
                    return None
            return False
        return None

    def by_title(self, ctx: _Item) -> bool:
        tokens = ctx.tokens
        return any(_has_phrase(tokens, form) for form in self.forms)


class _ProductRequirement(_Requirement):
    """The product type: what the type field names, or failing that the title is."""

    __slots__ = ("builtin", "product")

    def __init__(self, fields: tuple[str, ...], product: str) -> None:
        forms = _product_forms(product) | {_phrase(product)}
        self.builtin = product in _PRODUCT_NAMES
        if not self.builtin:  # a type of a Vocabulary: its words, in either number
            forms = {(*form[:-1], word) for form in forms if form for word in _numbers(form[-1])}
        super().__init__(fields, forms)
        self.product = product

    def read_field(self, strings: tuple[str, ...]) -> bool | None:
        if not self.builtin and super().read_field(strings):
            return True
        products = _field_products(strings)
        if self.builtin:
            return (self.product in products) if products else None  # "Clothing": ask the title
        return False if products else None  # "Dresses" is no kimono

    def by_title(self, ctx: _Item) -> bool:
        if not self.builtin:
            return super().by_title(ctx)
        return self.product in _title_products(ctx.tokens)


class _ColourRequirement(_Requirement):
    __slots__ = ()

    def read_field(self, strings: tuple[str, ...]) -> bool | None:
        tokens = [tokenize(s) for s in strings]
        if any(_has_phrase(ts, form) for ts in tokens for form in self.forms):
            return True  # a colour of a Vocabulary too: "sage"
        if not any(_is_colour(t) or t in COLOUR_MODIFIERS for ts in tokens for t in ts):
            return None  # "as pictured", "pattern 3": ask the title
        return False


class _KeywordRequirement:
    """A word of the query no vocabulary knows: a word of the item's text, in either number."""

    __slots__ = ("needles", "words")

    def __init__(self, keyword: str) -> None:
        words = {keyword, keyword + "s", keyword + "es"}
        if keyword.endswith("ies"):
            words.add(keyword[:-3] + "y")
        elif keyword.endswith("es"):
            words.update({keyword[:-2], keyword[:-1]})
        elif keyword.endswith("s"):
            words.add(keyword[:-1])
        if keyword.endswith("y"):
            words.add(keyword[:-1] + "ies")
        self.words = frozenset(w for w in words if w)
        runs = _ALNUM.findall(os.path.commonprefix(sorted(self.words)))
        self.needles = (max(runs, key=len),) if runs else None

    def check(self, ctx: _Item) -> bool | None:
        if self.needles is not None and self.needles[0] not in ctx.text_lower:
            return False
        return None

    def by_title(self, ctx: _Item) -> bool:
        return not self.words.isdisjoint(ctx.text_tokens)


def _rates(rates: Mapping[str, float] | None) -> dict[str, float]:
    checked = {}
    for code, rate in (rates or {}).items():
        if (not isinstance(code, str) or not _CODE.fullmatch(code) or isinstance(rate, bool)
                or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0):
            raise ValueError(
                f"Query rates entry {code!r}: {rate!r} must be an ISO 4217 code and the positive "
                f"number of the query's currency one unit of it is worth, e.g. {{'EUR': 1.08}}."
            )
        checked[code.upper()] = float(rate)
    return checked


class _Hit:
    """A matching item, before it is de-duplicated, grouped and ranked."""

    __slots__ = ("brand", "converted", "currency", "group", "item", "price", "priced", "site", "sku",
                 "title", "url")

    def __init__(self, item: Mapping[str, Any], site: str, title: str) -> None:
        self.item, self.site, self.title = item, site, title
        self.priced = False
        self.price: float | None = None
        self.currency: str | None = None
        self.converted: float | None = None
        self.url: str | None = None
        self.sku: str | None = None
        self.brand: str | None = None
        self.group: str | None = None


class _Matcher:
    """An intent compiled once, for many items. An item is tested in three passes, cheapest
    first: what its fields say (memoised per value) and a substring test of its title for
    every requirement; then its price; then the requirements left, on its title's words."""

    def __init__(self, intent: ParsedIntent, fields: FieldMap, rates: Mapping[str, float] | None) -> None:
        self.fields = fields
        self.rates = _rates(rates)
        self.title_fields = fields.fields("title")
        #: Fields whose words are not the product's: "iphone 15" is not an iPhone 14 at 15 euros.
        self.not_text = frozenset(name for key in ("url", "price", "currency", "listed", "rating",
                                                   "popularity", "gtin")
                                  for name in fields.fields(key))
        self.price_fields = fields.fields("price")
        self.currency_fields = fields.fields("currency")
        requirements: list[Any] = []
        matched: dict[str, Any] = {}
        if intent.product_type:
            requirements.append(_ProductRequirement(fields.fields("type"), intent.product_type))
            matched["product_type"] = intent.product_type
        for name, value in intent.attributes.items():
            values = value if isinstance(value, list) else [value]
            for one in values:  # "black and white": both
                kind = _ColourRequirement if name == "color" else _Requirement
                requirements.append(kind(fields.fields(name), _attribute_forms(name, one)))
            matched[name] = value
        for keyword in intent.keywords:
            requirements.append(_KeywordRequirement(keyword))
        if intent.keywords:
            matched["keywords"] = list(intent.keywords)
        self.requirements = requirements
        self.matched = matched
        bounds = intent.price_range
        self.low, self.high, self.query_currency = bounds.min, bounds.max, bounds.currency
        self.needs_price = (self.low is not None or self.high is not None
                            or intent.order in ("price_asc", "price_desc"))
        self.prices: dict[str, tuple[float | None, str | None]] = {}
        self.ctx = _Item({}, "", self.not_text)

    def price(self, item: Mapping[str, Any]) -> tuple[float | None, str | None]:
        value = currency = None
        for name in self.price_fields:
            value = item.get(name)
            if value is not None and value != "":
                break
        for name in self.currency_fields:
            currency = item.get(name)
            if currency:
                break
        if isinstance(value, str):
            found = self.prices.get(value)
            if found is None:
                found = self.prices[value] = parse_price(value)
            amount, code = found
        else:
            amount, code = parse_price(value)
        return amount, (_currency(currency) if currency else None) or code

    def hit(self, item: Mapping[str, Any], site: str) -> _Hit | None:
        title = None
        for name in self.title_fields:
            title = item.get(name)
            if title:
                break
        ctx = self.ctx
        ctx.reset(item, title if isinstance(title, str) else _text(title) or "")
        pending = None
        for requirement in self.requirements:  # what fields say and cheap tests first, for all
            said = requirement.check(ctx)
            if said is None:
                pending = [requirement] if pending is None else [*pending, requirement]
            elif not said:
                return None
        hit = _Hit(item, site, ctx.title)
        if self.needs_price:
            self.fill(hit)
            if hit.price is None:
                return None
            if self.low is not None or self.high is not None:
                compared = hit.price if self.query_currency is None else hit.converted
                if compared is None:
                    return None  # another currency, and no rate for it
                if ((self.low is not None and compared < self.low)
                        or (self.high is not None and compared > self.high)):
                    return None
        for requirement in pending or ():
            if not requirement.by_title(ctx):
                return None
        return hit

    def fill(self, hit: _Hit) -> None:
        """Read the hit's price (done only for the hits shown, unless the intent needs it)."""
        if hit.priced:
            return
        price, currency = self.price(hit.item)
        converted = None
        if price is not None and self.query_currency is not None:
            if currency is None or currency == self.query_currency:
                converted = price  # a price in no named currency is taken to be in the query's
            elif currency in self.rates:
                converted = round(price * self.rates[currency], 2)
        hit.price, hit.currency, hit.converted, hit.priced = price, currency, converted, True


def match(item: Mapping[str, Any], intent: ParsedIntent, fields: FieldMap | None = None, *,
          rates: Mapping[str, float] | None = None) -> dict[str, Any] | None:
    """What of *intent* the *item* matched (product_type, attributes, keywords), or None when
    it does not match. *rates* converts other currencies to the query's (currency -> rate)."""
    matcher = _Matcher(intent, fields or FieldMap(), rates)
    return None if matcher.hit(item, "") is None else dict(matcher.matched)


#: Characters that are not ASCII but whose lowercase has an ASCII letter ("\u212a" Kelvin is
#: "k", "\u0130" is "i" and a dot): the matcher can read a word in them that json.dumps (ASCII
#: only) writes as an escape, so a group with that letter also lets the escape through.
_ASCII_LOWERS = {"i": "\\u0130", "k": "\\u212a"}
#: A float of 17 digits or more is written by json.dumps as "1e+16" but read by the matcher
#: as "10000000000000000" (_strings): such a number is not in the JSON text.
_LONG_NUMBER = re.compile(r"\d{16}")


def _group_of(needles: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """*needles* as a prefilter group, None when one of them may be missing from the JSON
    text of an item that has it: a character json.dumps escapes, or a long number."""
    if not needles:
        return None
    for needle in needles:
        if not (needle.isascii() and needle.isalnum() and needle == needle.lower()) or _LONG_NUMBER.search(needle):
            return None
    escapes = {escape for letter, escape in _ASCII_LOWERS.items() if any(letter in n for n in needles)}
    return (*needles, *sorted(escapes))


def prefilter(intent: ParsedIntent, fields: FieldMap | None = None) -> list[tuple[str, ...]]:
    """What an item's JSON text (``json.dumps(item, default=str).lower()``, ASCII only) must hold
    for the item to be able to match *intent*: groups of lowercase substrings, one of each
    group in the text. A store filters with it before parsing items (``matching_items``); an
    item it lets through may still not match, one it drops never does. A requirement it
    cannot prove so (a word with characters json.dumps escapes, a long number) gives no
    group; price bounds and orders give none. [] when nothing is safe to ask."""
    matcher = _Matcher(intent, fields or FieldMap(), None)
    groups: list[tuple[str, ...]] = []
    for requirement in matcher.requirements:
        if isinstance(requirement, _KeywordRequirement):
            # check() requires the needle in a string field's lowercase text
            group = _group_of(requirement.needles)
        elif any(_LONG_NUMBER.search(token) for form in requirement.forms for token in form):
            group = None  # a float field of that number is written in exponent form
        else:
            # a field says it only with a form among its words, the title only with one too
            # (for the product type: one of its forms, which _field_products and
            # _title_products look up): the form's longest run is in the text then
            group = _group_of(requirement.needles)
        if group is not None and group not in groups:
            groups.append(group)
    return groups


# -- a vocabulary from items -----------------------------------------------------------------

#: The longest phrase a field value may be to join a vocabulary: longer is a description.
VOCABULARY_MAX_WORDS = 4


def _field_phrases(strings: Iterable[str], split: bool) -> Iterable[list[str]]:
    """The phrases of field values as the tokenizer cuts them; with *split* the parts of
    "Dresses & Skirts", "60% cotton, 40% wool" are phrases of their own."""
    for string in strings:
        for part in _SEGMENTS.split(string) if split else (string,):
            tokens = tokenize(part)
            if (tokens and len(tokens) <= VOCABULARY_MAX_WORDS
                    and any(not c.isdigit() and c.isalnum() for t in tokens for c in t)):
                yield tokens


def _all_known(tokens: list[str]) -> bool:
    return all(match is not None for match in _builtin_reads(tokens))


def _new_words(tokens: list[str]) -> list[str] | None:
    """*tokens* less the words the built-ins read before the first they do not know ("silk
    kimono": "kimono"), when none is known after; None when the built-ins know them all."""
    reads = _builtin_reads(tokens)
    if all(match is not None for match in reads):
        return None
    lengths = [match.length if match is not None else 1 for match in reads]
    first = next(n for n, match in enumerate(reads) if match is None)
    if any(match is not None for match in reads[first:]):
        return None  # "kimono dress", "poncho black": no one new word for one thing
    return tokens[sum(lengths[:first]):]


def _singular(phrases: set[str]) -> dict[str, str]:
    """Each phrase, or its singular when that is among them too: "kimonos" and "kimono"."""
    result = {}
    for phrase in sorted(phrases):
        *head, last = phrase.split()
        singulars = sorted((" ".join((*head, word)) for word in _numbers(last) if len(word) < len(last)),
                           key=lambda s: (-len(s), s))
        result[phrase] = next((s for s in singulars if s in phrases), phrase)
    return result


def vocabulary_from_items(items: Iterable[Mapping[str, Any]], fields: FieldMap | None = None,
                          limit: int = 10_000) -> Vocabulary:
    """The brands, product types, materials and colours of up to *limit* items that the
    built-in word lists lack, for parse_query: read from the fields *fields* names for
    "brand", "type", "material" and "color". A value of more than four words or of numbers
    only is left out, and so is one the built-ins read whole; a type the built-ins know is
    mapped to their name ("Dresses": "dress"). The same items give the same vocabulary."""
    fields = fields or FieldMap()
    values: dict[str, set[str]] = {kind: set() for kind in ("brand", "type", "material", "color")}
    for item in itertools.islice(items, max(limit, 0)):
        for kind, seen in values.items():  # few distinct values: each is read once
            seen.update(_strings(fields.get(item, kind)))
    brands: dict[str, str] = {}
    builtin_types: dict[str, str] = {}
    new_types: set[str] = set()
    materials: dict[str, str] = {}
    colors: dict[str, str] = {}
    for tokens in _field_phrases(values["brand"], split=False):
        if not _all_known(tokens):  # "Maison Clair" whole, "H&M" too: a brand is one name
            brands[" ".join(tokens)] = " ".join(tokens)
    for tokens in _field_phrases(values["type"], split=True):
        if (known := _PRODUCTS.get(tuple(tokens))) is not None:
            builtin_types[" ".join(tokens)] = known
        elif (words := _new_words(tokens)) is not None:
            new_types.add(" ".join(words))
    for tokens in _field_phrases(values["material"], split=True):
        if not _all_known(tokens):  # "cotton blend" whole: one material
            materials[" ".join(tokens)] = " ".join(tokens)
    for tokens in _field_phrases(values["color"], split=True):
        if not _all_known(tokens):  # "heather grey" whole: one colour
            colors[" ".join(tokens)] = " ".join(tokens)
    return Vocabulary(brands=brands, product_types={**_singular(new_types), **builtin_types},
                      materials=materials, colors=colors)


# -- aggregation ----------------------------------------------------------------------------


def _key(value: Any) -> str | None:
    text = value if type(value) is str else _text(value)
    return text.strip() or None if text is not None else None


def _words(text: str) -> list[str]:
    """Lowercase runs of letters and digits: enough to tell two titles apart."""
    return _ALNUM.findall(text.lower())


_Brand = tuple[str, frozenset[str]]


def _brand(value: Any, memo: dict[str, _Brand | None]) -> _Brand | None:
    """A brand as the query vocabulary writes it ("North Face" is "the north face"), and its words."""
    text = value if isinstance(value, str) else _text(value)
    if not text:
        return None
    found = memo.get(text, ...)
    if found is ...:
        words = " ".join(tokenize(text))
        brand = BRANDS.get(words, words)
        found = memo[text] = (brand, frozenset(_words(brand))) if brand else None
    return found  # type: ignore[return-value]


def _timestamp(value: Any) -> float | None:
    """When an item was listed, as seconds since the epoch: a datetime, a date, an ISO
    string or a number of seconds (or milliseconds)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value / 1000 if value > 1e11 else float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    return None


_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def _number(value: Any) -> float | None:
    """A rating or a count: a number, a string starting with one ("4.5/5"), a list's length."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and (found := _NUMBER.search(value)):
        return float(found[0].replace(",", "."))
    if isinstance(value, list):
        return float(len(value))
    return None


def _group(hits: list[_Hit], fields: FieldMap) -> None:
    """Give the hits that are one product (same GTIN, same brand and SKU, or same brand and
    title once the brand is taken out) one group key: the smallest of their keys."""
    parent = list(range(len(hits)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    keys: list[list[str]] = []
    brands: dict[str, _Brand | None] = {}
    brand_names, gtin_names = fields.fields("brand"), fields.fields("gtin")
    for i, hit in enumerate(hits):
        own = []
        hit.brand = _key(_first(hit.item, brand_names))
        brand, brand_words = _brand(hit.brand, brands) or ("", frozenset())
        if gtin := _key(_first(hit.item, gtin_names)):
            own.append(f"1 gtin:{gtin.lstrip('0')}")
        if hit.sku:
            own.append(f"2 sku:{brand}:{hit.sku.lower()}")
        if brand and hit.title:
            words = [w for w in _words(hit.title) if w not in brand_words]
            if words:
                own.append(f"3 title:{brand}:{' '.join(words)}")
        keys.append(own)
        for key in own:
            j = owner.setdefault(key, i)
            if j != i:
                a, b = root(j), root(i)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in range(len(hits)):
        if keys[i]:
            members.setdefault(root(i), []).append(i)
    for indexes in members.values():
        if len(indexes) > 1:
            key = min(k for i in indexes for k in keys[i])[2:]
            for i in indexes:
                hits[i].group = key


def _order_key(order: str | None, fields: FieldMap) -> Any:
    def ties(hit: _Hit) -> tuple[Any, ...]:
        return (hit.title.casefold(), hit.title, hit.site, hit.url or "")

    def price(hit: _Hit) -> float | None:
        return hit.converted if hit.converted is not None else hit.price

    if order == "price_asc":
        return lambda h: (price(h) is None, price(h) or 0.0, *ties(h))
    if order == "price_desc":
        return lambda h: (price(h) is None, -(price(h) or 0.0), *ties(h))
    if order == "newest":
        def newest(h: _Hit) -> tuple[Any, ...]:
            when = _timestamp(fields.get(h.item, "listed"))
            return (when is None, -(when or 0.0), *ties(h))
        return newest

    def rating(h: _Hit) -> tuple[Any, ...]:
        value = _number(fields.get(h.item, "rating"))
        return (value is None, -(value or 0.0))

    if order == "rating":
        return lambda h: (*rating(h), *ties(h))
    if order == "popular":
        def popular(h: _Hit) -> tuple[Any, ...]:
            count = _number(fields.get(h.item, "popularity"))
            return (count is None, -(count or 0.0), *rating(h), *ties(h))
        return popular
    return ties


def _listed(value: Any) -> str | None:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return _key(value)


def aggregate(intent: ParsedIntent, sources: Iterable[tuple[str, Iterable[Mapping[str, Any]]]], *,
              fields: FieldMap | None = None, limit: int | None = None,
              rates: Mapping[str, float] | None = None) -> list[QueryResult]:
    """The items of *sources* ((site, items) pairs) that match *intent*, each product once per
    site, the same product on several sites grouped, ordered as the intent asks (cheapest
    first when it bounds the price) and cut to *limit*.

    *rates* converts an item's currency to the query's (currency -> rate); without one, an
    item in another currency than the query's price bounds does not match."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"Query limit ({limit!r}) must be a whole number of results, 0 or more.")
    fields = fields or FieldMap()
    matcher = _Matcher(intent, fields, rates)
    hits: list[_Hit] = []
    seen: dict[str, tuple[set[str], set[str]]] = {}
    url_names, sku_names = fields.fields("url"), fields.fields("sku")
    for site, items in sources:
        urls, skus = seen.setdefault(site, (set(), set()))
        for item in items:
            hit = matcher.hit(item, site)
            if hit is None:
                continue
            url = _key(_first(item, url_names))
            sku = _key(_first(item, sku_names))
            if (url is not None and url in urls) or (sku is not None and sku in skus):
                continue  # the same product twice on one site: the first is kept
            if url is not None:
                urls.add(url)
            if sku is not None:
                skus.add(sku)
            hit.url, hit.sku = url, sku
            hits.append(hit)
    _group(hits, fields)
    order = intent.order
    if order is None and (intent.price_range.min is not None or intent.price_range.max is not None):
        order = "price_asc"
    hits.sort(key=_order_key(order, fields))
    if limit is not None:
        hits = hits[:limit]
    listed_names, rating_names = fields.fields("listed"), fields.fields("rating")
    results = []
    for hit in hits:
        matcher.fill(hit)
        results.append(QueryResult(
            title=hit.title, price=hit.price, currency=hit.currency, url=hit.url, site=hit.site,
            matched={k: list(v) if isinstance(v, list) else v for k, v in matcher.matched.items()},
            group=hit.group, converted_price=hit.converted, sku=hit.sku, brand=hit.brand,
            listed=_listed(_first(hit.item, listed_names)), rating=_number(_first(hit.item, rating_names)),
        ))
    return results
