"""Shopping query parsing: "cheapest red dress under $50" to a ParsedIntent, offline and deterministic."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import ValidationError

from ..models import ParsedIntent, PriceRange, QueryOrder

try:
    import webcolors
    from price_parser import Price
except ImportError as exc:
    raise ImportError(
        "Query parsing needs price-parser and webcolors: pip install 'scrapy-checkpoint[query]'"
    ) from exc

__all__ = ["QueryError", "Vocabulary", "parse_query", "tokenize"]


class QueryError(ValueError):
    """A query that cannot be used: empty, only stop words, or contradictory."""


# -- vocabularies ---------------------------------------------------------------------------
# Keys are lowercase phrases of one or more words, as the tokenizer cuts them.

#: Product types: the name returned (singular, or plural for things that come in pairs) and
#: the other words for it. Plurals ending in -s/-es/-ies are added by _with_plurals.
PRODUCT_TYPES: dict[str, tuple[str, ...]] = {
    # clothing
    "dress": ("gown",),
    "skirt": (),
    "shirt": (),
    "t-shirt": ("t shirt", "tshirt", "tee"),
    "blouse": (),
    "top": (),
    "sweater": ("jumper", "pullover"),
    "cardigan": (),
    "hoodie": ("hoody",),
    "sweatshirt": (),
    "jacket": (),
    "coat": ("parka",),
    "blazer": (),
    "suit": (),
    "vest": ("waistcoat",),
    "jeans": (),
    "pants": ("trousers", "chinos", "slacks"),
    "shorts": (),
    "leggings": (),
    "joggers": ("sweatpants",),
    "swimsuit": ("swimwear", "bikini"),
    "pajamas": ("pyjamas",),
    "socks": ("sock",),
    # footwear
    "shoes": ("shoe",),
    "sneakers": ("sneaker", "trainers", "trainer"),
    "boots": ("boot",),
    "sandals": ("sandal",),
    "heels": ("heel", "pumps"),
    "loafers": ("loafer",),
    "slippers": ("slipper",),
    # accessories
    "bag": ("handbag", "purse", "tote"),
    "backpack": ("rucksack",),
    "wallet": (),
    "belt": (),
    "hat": ("cap", "beanie"),
    "scarf": ("scarves",),
    "gloves": ("glove",),
    "tie": (),
    "watch": (),
    "sunglasses": (),
    "necklace": (),
    "bracelet": (),
    "earrings": ("earring",),
    "ring": (),
    # electronics
    "laptop": (),
    "phone": ("smartphone", "cellphone", "mobile phone"),
    "tablet": (),
    "headphones": ("headphone", "headset"),
    "earbuds": ("earbud", "earphones"),
    "speaker": (),
    "tv": ("television", "tvs"),
    "monitor": (),
    "camera": (),
    "keyboard": (),
    "mouse": ("mice",),
    "charger": (),
    "cable": (),
    "smartwatch": (),
    "console": (),
    "printer": (),
    "router": (),
    "case": (),
    # home
    "sofa": ("couch",),
    "chair": (),
    "table": (),
    "desk": (),
    "lamp": (),
    "bed": (),
    "mattress": (),
    "pillow": ("cushion",),
    "blanket": (),
    "towel": (),
    "rug": ("carpet",),
    "curtains": ("curtain",),
    "mug": (),
    "kettle": (),
    "toaster": (),
    "blender": (),
    "vacuum": ("vacuum cleaner", "hoover"),
    "coffee maker": ("coffee machine",),
    "air fryer": (),
}

#: What a product is for, or how it is cut: "running shoes", "maxi dress", "wireless earbuds".
STYLES: frozenset[str] = frozenset({
    "running", "hiking", "walking", "trail", "training", "gym", "basketball", "tennis", "golf",
    "yoga", "casual", "formal", "evening", "cocktail", "party", "wedding", "business", "office",
    "outdoor", "rain", "winter", "summer", "beach", "maxi", "midi", "mini", "v-neck",
    "crew neck", "over-ear", "on-ear", "in-ear", "wireless", "bluetooth", "noise cancelling",
    "noise canceling", "gaming", "4k", "oled", "waterproof",
})

#: How a garment fits.
FITS: dict[str, str] = {
    "slim": "slim", "slim fit": "slim", "skinny": "skinny", "straight": "straight",
    "straight leg": "straight", "relaxed": "relaxed", "relaxed fit": "relaxed",
    "regular fit": "regular", "loose": "loose", "oversized": "oversized", "bootcut": "bootcut",
    "wide leg": "wide leg",
}

#: Colours webcolors does not know; its CSS3 names are colours too, except _NOT_COLOURS.
FASHION_COLOURS: frozenset[str] = frozenset({
    "burgundy", "charcoal", "cream", "camel", "mustard", "taupe", "nude", "rust", "wine",
    "mint", "emerald", "blush", "champagne", "multicolor", "multicolour", "lilac", "mauve",
    "ecru", "cognac", "rose", "sand", "stone", "neon",
})
#: CSS3 colour names that in a shopping query mostly mean something else.
_NOT_COLOURS: frozenset[str] = frozenset({
    "linen", "snow", "tomato", "chocolate", "moccasin", "peru", "bisque",
})
#: Words that make a two-word colour with the colour after them: "light blue", "navy blue".
COLOUR_MODIFIERS: frozenset[str] = frozenset({
    "light", "dark", "pale", "bright", "deep", "hot", "baby", "royal", "navy", "sky", "rose",
    "pastel", "neon", "off",
})

MATERIALS: dict[str, str] = {
    "cotton": "cotton", "organic cotton": "organic cotton", "leather": "leather",
    "faux leather": "faux leather", "vegan leather": "faux leather", "wool": "wool",
    "woolen": "wool", "woollen": "wool", "merino": "merino wool", "merino wool": "merino wool",
    "cashmere": "cashmere", "silk": "silk", "denim": "denim", "linen": "linen",
    "polyester": "polyester", "nylon": "nylon", "suede": "suede", "velvet": "velvet",
    "satin": "satin", "lace": "lace", "fleece": "fleece", "corduroy": "corduroy",
    "chiffon": "chiffon", "spandex": "spandex", "viscose": "viscose", "rayon": "rayon",
    "bamboo": "bamboo", "canvas": "canvas", "rubber": "rubber", "wood": "wood",
    "wooden": "wood", "oak": "oak", "stainless steel": "stainless steel", "steel": "steel",
    "glass": "glass", "ceramic": "ceramic", "plastic": "plastic",
}

#: Brands, as the name is written in a query; the value is the one returned.
BRANDS: dict[str, str] = {
    "nike": "nike", "adidas": "adidas", "puma": "puma", "reebok": "reebok",
    "new balance": "new balance", "asics": "asics", "converse": "converse", "vans": "vans",
    "under armour": "under armour", "levi's": "levi's", "levis": "levi's", "zara": "zara",
    "h&m": "h&m", "uniqlo": "uniqlo", "gap": "gap", "mango": "mango",
    "ralph lauren": "ralph lauren", "tommy hilfiger": "tommy hilfiger",
    "calvin klein": "calvin klein", "the north face": "the north face",
    "north face": "the north face", "patagonia": "patagonia", "columbia": "columbia",
    "gucci": "gucci", "prada": "prada", "apple": "apple", "samsung": "samsung",
    "sony": "sony", "lg": "lg", "dell": "dell", "hp": "hp", "lenovo": "lenovo", "asus": "asus",
    "acer": "acer", "bose": "bose", "jbl": "jbl", "canon": "canon", "nikon": "nikon",
    "ikea": "ikea", "dyson": "dyson", "kitchenaid": "kitchenaid", "philips": "philips",
}

GENDERS: dict[str, str] = {
    "women": "women", "woman": "women", "womens": "women", "women's": "women",
    "ladies": "women", "ladies'": "women", "lady": "women", "female": "women",
    "for her": "women",
    "men": "men", "man": "men", "mens": "men", "men's": "men", "male": "men", "for him": "men",
    "kids": "kids", "kid": "kids", "kids'": "kids", "children": "kids", "children's": "kids",
    "child": "kids", "boys": "boys", "boy": "boys", "boys'": "boys", "girls": "girls",
    "girl": "girls", "girls'": "girls", "unisex": "unisex",
}

#: Sizes said in words or letters; "s", "m" and "l" count only after "size".
LETTER_SIZES: dict[str, str] = {
    "xxs": "XXS", "xs": "XS", "extra small": "XS", "x-small": "XS", "small": "S",
    "medium": "M", "large": "L", "xl": "XL", "extra large": "XL", "x-large": "XL",
    "xxl": "XXL", "2xl": "XXL", "xxxl": "XXXL", "3xl": "XXXL", "4xl": "4XL", "5xl": "5XL",
}
_SHORT_SIZES: dict[str, str] = {"s": "S", "m": "M", "l": "L"}
SIZE_SYSTEMS: dict[str, str] = {"us": "US", "uk": "UK", "eu": "EU"}
#: Units of a number that make it a size or a capacity, not a price.
UNITS: dict[str, tuple[str, str]] = {
    "inch": ("size", "{} inch"), "inches": ("size", "{} inch"), '"': ("size", "{} inch"),
    "gb": ("capacity", "{}GB"), "tb": ("capacity", "{}TB"),
}

ORDERS: dict[str, QueryOrder] = {
    "cheapest": "price_asc", "cheap": "price_asc", "lowest price": "price_asc",
    "low price": "price_asc", "least expensive": "price_asc", "inexpensive": "price_asc",
    "affordable": "price_asc", "budget": "price_asc", "bargain": "price_asc",
    "low to high": "price_asc", "price low to high": "price_asc",
    "most expensive": "price_desc", "priciest": "price_desc", "premium": "price_desc",
    "luxury": "price_desc", "high end": "price_desc", "high-end": "price_desc",
    "highest price": "price_desc", "high to low": "price_desc",
    "price high to low": "price_desc",
    "newest": "newest", "latest": "newest", "new arrivals": "newest", "most recent": "newest",
    "best rated": "rating", "top rated": "rating", "highest rated": "rating",
    "best reviewed": "rating", "highly rated": "rating", "best": "rating",
    "best selling": "popular", "bestselling": "popular", "best seller": "popular",
    "best sellers": "popular", "bestseller": "popular", "bestsellers": "popular",
    "most popular": "popular", "popular": "popular", "trending": "popular",
}

#: Words before an amount that bound the price.
PRICE_WORDS: dict[str, str] = {
    "under": "max", "below": "max", "less than": "max", "cheaper than": "max", "up to": "max",
    "max": "max", "maximum": "max", "at most": "max", "no more than": "max",
    "not more than": "max", "within": "max", "<": "max",
    "over": "min", "above": "min", "more than": "min", "at least": "min", "min": "min",
    "minimum": "min", "starting at": "min", "greater than": "min", ">": "min",
    "between": "between", "from": "from",
    "around": "around", "about": "around", "approximately": "around", "roughly": "around",
    "approx": "around", "~": "around",
}
#: Words between the two amounts of a range: "20 to 50", "$20-$50", "between 20 and 50".
RANGE_JOINERS: frozenset[str] = frozenset({"to", "-", "and"})
#: "around $100" asks for 80 to 120.
AROUND_TOLERANCE = 0.2

#: Currency symbols, codes and words: ISO 4217 codes.
CURRENCIES: dict[str, str] = {
    "$": "USD", "usd": "USD", "dollar": "USD", "dollars": "USD", "bucks": "USD",
    "€": "EUR", "eur": "EUR", "euro": "EUR", "euros": "EUR",
    "£": "GBP", "gbp": "GBP", "pound": "GBP", "pounds": "GBP", "quid": "GBP",
    "¥": "JPY", "jpy": "JPY", "yen": "JPY", "₹": "INR", "inr": "INR", "rupees": "INR",
    "cad": "CAD", "aud": "AUD", "chf": "CHF", "sek": "SEK", "nok": "NOK", "dkk": "DKK",
    "pln": "PLN",
}

#: Words that carry no intent: dropped. Phrases of several words win over these.
STOP_WORDS: frozenset[str] = frozenset({
    "a", "an", "the", "find", "me", "show", "i", "i'm", "im", "want", "wanna", "need", "needs",
    "looking", "look", "search", "searching", "get", "buy", "shop", "shopping", "please", "pls",
    "for", "with", "in", "on", "of", "to", "at", "and", "or", "that", "which", "is", "are",
    "some", "any", "my", "something", "anything", "would", "like", "can", "could", "you",
    "give", "list", "pair", "pairs", "set", "price", "prices", "priced", "cost", "costs",
    "costing", "than", "size", "sized", "color", "colour", "colored", "coloured", "made",
    "brand", "new", "items", "products", "sort", "sorted", "order", "by", "fit", "off",
    "what", "where", "whats", "what's", "there", "it", "one", "ones", "first",
})

# -- tokens ---------------------------------------------------------------------------------

_SYMBOLS = "$€£¥₹"
_TOKEN = re.compile(
    rf"[{_SYMBOLS}]?\d+(?:[.,]\d+)*(?:x\d+|[^\W\d_]+|[{_SYMBOLS}])?"  # $50, 50eur, 1.5k, 32x34, 256gb
    r"|[^\W\d_]+(?:['&-][^\W_]+)*'?"  # words: t-shirt, women's, h&m, ladies'
    rf"|[{_SYMBOLS}<>~\"-]"  # a symbol on its own
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_AMOUNT = re.compile(rf"([{_SYMBOLS}]?)(\d+(?:[.,]\d+)*)(k?)([{_SYMBOLS}]|[^\W\d_]+)?")
_PERCENT = re.compile(r"\d+(?:[.,]\d+)?\s*%")
_WAIST_LENGTH = re.compile(r"(\d{2})x(\d{2})")


def _with_plurals(forms: Mapping[str, str]) -> dict[str, str]:
    """*forms* and the regular plural of each of them (of its last word)."""
    result = dict(forms)
    for form, value in forms.items():
        if form.endswith(("s", "x", "ch", "sh")):
            plural = form + "es"
        elif form.endswith("y") and form[-2:-1] not in "aeiou":
            plural = form[:-1] + "ies"
        else:
            plural = form + "s"
        result.setdefault(plural, value)
    return result


def _phrases(table: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    return {tuple(key.split()): value for key, value in table.items()}


_PRODUCTS = _phrases(_with_plurals({
    form: name for name, others in PRODUCT_TYPES.items() for form in (name, *others)
}))
_STYLES = _phrases({style: style for style in STYLES})
_FITS = _phrases(FITS)
_MATERIALS = _phrases(MATERIALS)
_BRANDS = _phrases(BRANDS)
_GENDERS = _phrases(GENDERS)
_LETTER_SIZES = _phrases(LETTER_SIZES)
_ORDERS = _phrases(ORDERS)
_PRICE_WORDS = _phrases(PRICE_WORDS)
# A price word with no amount after it ("between", "max", "from zara") says nothing.
_STOP_WORDS = STOP_WORDS | {key for key in PRICE_WORDS if key.isalpha()}
_LONGEST = max(len(key) for table in (_PRODUCTS, _STYLES, _FITS, _MATERIALS, _BRANDS, _GENDERS,
                                      _LETTER_SIZES, _ORDERS, _PRICE_WORDS) for key in table)
#: Hyphenated words kept whole; others are split ("top-rated": "top", "rated").
_HYPHENATED = frozenset(
    word for table in (_PRODUCTS, _STYLES, _FITS, _MATERIALS, _BRANDS, _GENDERS, _LETTER_SIZES,
                       _ORDERS, _PRICE_WORDS) for key in table for word in key if "-" in word
)


def tokenize(text: str) -> list[str]:
    """The lowercase words, amounts and symbols of *text*; other punctuation is dropped."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub("[\u2010-\u2015]", "-", text).replace("\u2033", '"')
    text = _PERCENT.sub(" ", text)  # "100% cotton", "20% off": neither a price nor a size
    tokens: list[str] = []
    for token in _TOKEN.findall(text):
        if "-" in token and token != "-" and token not in _HYPHENATED:
            tokens += [part for part in token.split("-") if part]
        else:
            tokens.append(token)
    return tokens


def _lookup(table: Mapping[tuple[str, ...], str], tokens: list[str], i: int,
            longest: int = _LONGEST) -> tuple[int, str | None]:
    """The longest phrase of *table* starting at tokens[i]: its length and value, or (0, None)."""
    for n in range(min(longest, len(tokens) - i), 0, -1):
        value = table.get(tuple(tokens[i:i + n]))
        if value is not None:
            return n, value
    return 0, None


# -- what a run of tokens means -------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    """*length* tokens that mean *value*, of one *kind*: "product", "attribute" (a (name,
    value) pair), "price" (a (min, max, currency) triple), "order" or "stop"."""

    length: int
    kind: str
    value: Any = None


_Reader = Callable[[list[str], int], "_Match | None"]


def _table_reader(table: Mapping[tuple[str, ...], str], kind: str, attribute: str | None = None) -> _Reader:
    longest = max((len(key) for key in table), default=0)

    def read(tokens: list[str], i: int) -> _Match | None:
        n, value = _lookup(table, tokens, i, longest)
        if not n:
            return None
        return _Match(n, kind, (attribute, value) if attribute else value)

    return read


def _is_colour(word: str) -> bool:
    if word in FASHION_COLOURS:
        return True
    if word in _NOT_COLOURS or not word.isalpha():
        return False
    try:
        webcolors.name_to_hex(word)
    except ValueError:
        return False
    return True


def _colour(tokens: list[str], i: int) -> _Match | None:
    word = tokens[i]
    following = tokens[i + 1] if i + 1 < len(tokens) else ""
    if word in COLOUR_MODIFIERS and _is_colour(following):
        return _Match(2, "attribute", ("color", f"{word} {following}"))
    if _is_colour(word):
        return _Match(1, "attribute", ("color", word))
    return None


def _is_number(token: str) -> bool:
    return _NUMBER.fullmatch(token) is not None


def _size(tokens: list[str], i: int) -> _Match | None:
    """A size (after the word "size" or in a form no price takes), or a capacity."""
    if tokens[i] == "size" and i + 1 < len(tokens):
        found = _size_value(tokens, i + 1, after_size=True)
        return None if found is None else _Match(found.length + 1, found.kind, found.value)
    return _size_value(tokens, i, after_size=False)


def _size_value(tokens: list[str], i: int, after_size: bool) -> _Match | None:
    word = tokens[i]
    following = tokens[i + 1] if i + 1 < len(tokens) else ""
    if word in SIZE_SYSTEMS and _is_number(following):
        return _Match(2, "attribute", ("size", f"{SIZE_SYSTEMS[word]} {following}"))
    if match := _WAIST_LENGTH.fullmatch(word):
        return _Match(1, "attribute", ("size", f"{match[1]}x{match[2]}"))
    if following == "x" and i + 2 < len(tokens) and _WAIST_LENGTH.fullmatch(f"{word}x{tokens[i + 2]}"):
        return _Match(3, "attribute", ("size", f"{word}x{tokens[i + 2]}"))
    n, letters = _lookup(_LETTER_SIZES, tokens, i)
    if n:
        return _Match(n, "attribute", ("size", letters))
    if after_size and word in _SHORT_SIZES:
        return _Match(1, "attribute", ("size", _SHORT_SIZES[word]))
    if measure := _measure(word, following):
        return measure
    if after_size and _is_number(word):
        return _Match(1, "attribute", ("size", word))
    return None


def _measure(word: str, following: str) -> _Match | None:
    """A number with one of UNITS, in one token ("256gb") or two ("65 inch")."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", word)
    if match is None:
        return None
    number, unit, length = match[1], match[2], 1
    if not unit:
        unit, length = following, 2
    if unit not in UNITS:
        return None
    name, template = UNITS[unit]
    return _Match(length, "attribute", (name, template.format(number)))


@dataclass(frozen=True)
class _Money:
    """An amount that *length* tokens say, in *currency* (an ISO code) when they name one."""

    length: int
    amount: float
    currency: str | None


def _money(tokens: list[str], i: int) -> _Money | None:
    """An amount at tokens[i], with its currency: "$50", "50 dollars", "usd 40", "1.5k"."""
    currency = None
    start = i
    if tokens[i] in CURRENCIES and i + 1 < len(tokens):  # "$ 50", "usd 40"
        currency = CURRENCIES[tokens[i]]
        i += 1
    parts = _AMOUNT.fullmatch(tokens[i])
    if parts is None:
        return None
    symbol = parts[1] or parts[4]
    if symbol and symbol not in CURRENCIES:
        return None  # 256gb, 2xl: a capacity or a size
    price = Price.fromstring(parts[1] + parts[2] + (parts[4] or ""))
    if price.amount_float is None:
        return None
    amount = price.amount_float * (1000 if parts[3] else 1)
    currency = currency or CURRENCIES.get((price.currency or "").lower())
    if currency is None and i + 1 < len(tokens) and tokens[i + 1] in CURRENCIES:  # "30 eur"
        return _Money(i + 2 - start, amount, CURRENCIES[tokens[i + 1]])
    return _Money(i + 1 - start, amount, currency)


def _price(tokens: list[str], i: int) -> _Match | None:
    """A price bound: "under $50", "between 20 and 50", "$20-$50", "around 100", "50 dollars"."""
    n, bound = _lookup(_PRICE_WORDS, tokens, i)
    first = _money(tokens, i + n) if i + n < len(tokens) else None
    if first is None:
        return None
    end = i + n + first.length
    second = None
    if bound in (None, "between", "from") and end + 1 < len(tokens) and tokens[end] in RANGE_JOINERS:
        second = _money(tokens, end + 1)
    if second is not None:
        low, high = sorted((first.amount, second.amount))
        return _Match(end + 1 + second.length - i, "price",
                      (low, high, first.currency or second.currency))
    currency = first.currency
    if bound in ("max", "min"):
        low, high = (first.amount, None) if bound == "min" else (None, first.amount)
    elif bound == "from":
        low, high = first.amount, None
    elif bound == "around":
        low = round(first.amount * (1 - AROUND_TOLERANCE), 2)
        high = round(first.amount * (1 + AROUND_TOLERANCE), 2)
    elif bound is None and currency is not None:  # "a $50 dress": a budget
        low, high = None, first.amount
    else:
        return None  # "iphone 15", "between 20": a bare number is not a price
    return _Match(end - i, "price", (low, high, currency))


def _brand_by(tokens: list[str], i: int, known: tuple[_Reader, ...] | None = None) -> _Match | None:
    """A brand after "by" that no vocabulary knows: "dresses by reformation"."""
    if tokens[i] != "by" or i + 1 >= len(tokens):
        return None
    name = tokens[i + 1]
    if not name.isalpha() or any(read(tokens, i + 1) is not None for read in known or _KNOWN):
        return None
    return _Match(2, "attribute", ("brand", name))


def _stop(tokens: list[str], i: int) -> _Match | None:
    return _Match(1, "stop") if tokens[i] in _STOP_WORDS else None


#: The readers of the built-in vocabularies.
_TABLE_READERS: tuple[_Reader, ...] = (
    _price,
    _table_reader(_ORDERS, "order"),
    _size,
    _table_reader(_BRANDS, "attribute", "brand"),
    _table_reader(_PRODUCTS, "product"),
    _table_reader(_GENDERS, "attribute", "gender"),
    _table_reader(_MATERIALS, "attribute", "material"),
    _table_reader(_FITS, "attribute", "fit"),
    _colour,
    _table_reader(_STYLES, "attribute", "style"),
)
#: What a word after "by" must not be to be taken for a brand.
_KNOWN: tuple[_Reader, ...] = (*_TABLE_READERS, _stop)
#: Every reader; at each position the longest match wins, the first listed on a tie.
_READERS: tuple[_Reader, ...] = (*_TABLE_READERS, _brand_by, _stop)


def _read(tokens: list[str], i: int, readers: tuple[_Reader, ...] = _READERS) -> _Match | None:
    best = None
    for reader in readers:
        match = reader(tokens, i)
        if match is not None and (best is None or match.length > best.length):
            best = match
    return best


def _builtin_reads(tokens: list[str]) -> list[_Match | None]:
    """What the built-in vocabularies read in *tokens*, read as a query is: a match per
    phrase, None per word they do not know."""
    reads: list[_Match | None] = []
    i = 0
    while i < len(tokens):
        match = _read(tokens, i, _KNOWN)
        reads.append(match)
        i += match.length if match is not None else 1
    return reads


# -- a vocabulary grown from the sites' items -------------------------------------------------

#: What each kind of the Vocabulary is read as: a match kind and the attribute it sets.
_VOCABULARY_KINDS: Mapping[str, tuple[str, str | None]] = {
    "brands": ("attribute", "brand"), "product_types": ("product", None),
    "materials": ("attribute", "material"), "colors": ("attribute", "color"),
}


def _normal(phrase: str) -> str:
    return " ".join(tokenize(phrase))


def _entries(given: Mapping[str, str] | Iterable[str], builtin: Mapping[tuple[str, ...], str]) -> dict[str, str]:
    """*given* phrases (each its own value, or mapped to one) as the tokenizer writes them,
    sorted; a value the built-ins know is written as they write it ("dresses": "dress")."""
    pairs = given.items() if isinstance(given, Mapping) else ((phrase, phrase) for phrase in given)
    entries: dict[str, str] = {}
    for phrase, value in pairs:
        if not isinstance(phrase, str) or not isinstance(value, str):
            raise TypeError(f"Vocabulary phrases and their values must be strings, not {phrase!r}: {value!r}.")
        key, value = _normal(phrase), _normal(value)
        if key and value:
            entries[key] = builtin.get(tuple(value.split()), value)
    return dict(sorted(entries.items()))


def _product_forms(table: Mapping[str, str]) -> dict[str, str]:
    """The phrases of *table*, its names, and their plurals, as the built-in products have."""
    return _with_plurals({**{name: name for name in table.values()}, **table})


class Vocabulary:
    """Phrases the built-in word lists lack, per kind, e.g. the brands and product types of
    the sites' own items (queries.vocabulary_from_items). Each kind takes phrases (each its
    own value) or a mapping of phrase to value: ``Vocabulary(brands=["Maison Clair"],
    product_types={"kimonos": "kimono"})``. The built-ins win a tie: a phrase they read the
    same length keeps its built-in meaning. Product types are read by their names and in
    the plural too."""

    __slots__ = ("_readers", "brands", "colors", "materials", "product_types")

    def __init__(self, brands: Mapping[str, str] | Iterable[str] = (),
                 product_types: Mapping[str, str] | Iterable[str] = (),
                 materials: Mapping[str, str] | Iterable[str] = (),
                 colors: Mapping[str, str] | Iterable[str] = ()) -> None:
        #: Lowercase phrase, as the tokenizer cuts it: the value the query gets.
        self.brands: Mapping[str, str] = _entries(brands, _BRANDS)
        self.product_types: Mapping[str, str] = _entries(product_types, _PRODUCTS)
        self.materials: Mapping[str, str] = _entries(materials, _MATERIALS)
        self.colors: Mapping[str, str] = _entries(colors, {})
        extra = tuple(
            _table_reader(_phrases(_product_forms(table) if kind == "product_types" else table), *read_as)
            for kind, read_as in _VOCABULARY_KINDS.items() if (table := getattr(self, kind))
        )
        known = (*_KNOWN, *extra)
        # After the built-ins, so that they win a tie.
        self._readers: tuple[_Reader, ...] = (
            *_TABLE_READERS, partial(_brand_by, known=known), _stop, *extra)

    def __len__(self) -> int:
        return sum(len(getattr(self, kind)) for kind in _VOCABULARY_KINDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and all(
            getattr(self, kind) == getattr(other, kind) for kind in _VOCABULARY_KINDS)

    def __repr__(self) -> str:
        given = ", ".join(f"{kind}={dict(table)!r}" for kind in _VOCABULARY_KINDS
                          if (table := getattr(self, kind)))
        return f"Vocabulary({given})"


# -- the intent -----------------------------------------------------------------------------


@dataclass
class _Draft:
    """The intent while the tokens are read."""

    product_type: str | None = None
    product_end: int = -1
    attributes: dict[str, Any] = field(default_factory=dict)
    low: float | None = None
    high: float | None = None
    currency: str | None = None
    order: QueryOrder | None = None
    keywords: list[str] = field(default_factory=list)

    def add(self, match: _Match, start: int) -> None:
        if match.kind == "product":
            self.add_product(match.value, start, start + match.length)
        elif match.kind == "attribute":
            self.add_attribute(*match.value)
        elif match.kind == "price":
            self.add_price(*match.value)
        elif match.kind == "order":
            self.order = self.order or match.value

    def add_product(self, name: str, start: int, end: int) -> None:
        if self.product_type is None:
            self.product_type, self.product_end = name, end
        elif start == self.product_end:
            # The head noun comes last: "dress shoes" are shoes, "laptop bag" a bag.
            self.add_attribute("style", self.product_type)
            self.product_type, self.product_end = name, end
        else:
            self.keywords.append(name)  # a second product: "dress or skirt"

    def add_attribute(self, name: str, value: str) -> None:
        """One value is kept as it is; several ("black and white") as a list, in order."""
        values = self.attributes.get(name)
        if values is None:
            self.attributes[name] = value
        elif isinstance(values, list):
            if value not in values:
                values.append(value)
        elif values != value:
            self.attributes[name] = [values, value]

    def add_price(self, low: float | None, high: float | None, currency: str | None) -> None:
        """Bounds narrow what is there: "under 50 ... under 30" is under 30."""
        if low is not None:
            self.low = low if self.low is None else max(self.low, low)
        if high is not None:
            self.high = high if self.high is None else min(self.high, high)
        self.currency = self.currency or currency

    @property
    def empty(self) -> bool:
        return (self.product_type is None and not self.attributes and self.low is None
                and self.high is None and not self.keywords)


_EXAMPLE = "e.g. 'red dress under $50'"


def parse_query(text: str, vocabulary: Vocabulary | None = None) -> ParsedIntent:
    """What the shopping query *text* asks for, read with the built-in word lists and the
    *vocabulary*'s phrases. Words neither knows are kept as keywords; raises QueryError when
    nothing in it can select a product."""
    if not text or not text.strip():
        raise QueryError(f"The query {text!r} is empty: say what to look for, {_EXAMPLE}.")
    tokens = tokenize(text)
    readers = _READERS if vocabulary is None else vocabulary._readers
    draft = _Draft()
    i = 0
    while i < len(tokens):
        match = _read(tokens, i, readers)
        if match is not None:
            draft.add(match, i)
            i += match.length
            continue
        if tokens[i][0].isalnum() and tokens[i] not in draft.keywords:
            draft.keywords.append(tokens[i])
        i += 1
    if draft.empty:
        raise QueryError(
            f"The query {text!r} names nothing to look for (no product, attribute, price or "
            f"other word than ones like 'find', 'me', 'cheapest'): say what to look for, {_EXAMPLE}."
        )
    try:
        price_range = PriceRange(min=draft.low, max=draft.high, currency=draft.currency)
    except ValidationError as exc:
        raise QueryError(
            f"The query {text!r} asks for a price of at least {draft.low:g} and at most "
            f"{draft.high:g}: no price is both."
        ) from exc
    return ParsedIntent(product_type=draft.product_type, attributes=draft.attributes,
                        price_range=price_range, order=draft.order, keywords=draft.keywords)
