"""Small deterministic fashion shops on 127.0.0.1 for the query example and its tests.

Run ``python fashion_shop.py --shop northwind --port 0 --products 300 --log shop.log``.
The first line on stdout is ``FASHION_SHOP_URL=http://127.0.0.1:PORT``; nothing else is
printed. Two shops, with different catalogs:

- ``northwind``: Northwind Outfitters, prices in US dollars ("$1,249.00"), US shoe sizes.
- ``lumiere``: Lumière Paris, prices in euros ("1.249,00 €"), EU shoe sizes.

Every third product of each shop is the same model on both (same brand, title, type,
colour and material), at its own sku, price, sizes and date. Pages:

- ``/``: links to every category, and a search form.
- ``/category/<type>?page=N``: one listing page of a product type (``dress``, ``t-shirt``,
  ...), with a ``rel="next"`` link while there is a next page.
- ``/search?type=&color=&min_price=&max_price=&q=&page=N``: the products that match, as
  :meth:`Catalog.search` says, paginated like a category. Prices are in the shop's
  currency; ``color`` may repeat (any of them).
- ``/product/<sku>``: title, brand, price, currency, type, colour, material, sizes, listing
  date and rating of one product, marked up with classes and schema.org microdata.

The same arguments always give the same catalog, byte for byte, so that a crawl or a query
can be checked against it (``Catalog(shop, products).search(...)``). ``--log`` appends the
path of every served request, one per line.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from demo_shop import ShopHandler, ShopServer, _non_negative, _positive_int, serve

URL_PREFIX = "FASHION_SHOP_URL="


@dataclass(frozen=True)
class Shop:
    """What makes one shop differ from the other: name, currency, how it writes a price,
    its shoe sizes, its own brands and its mix of product types."""

    key: str
    name: str
    currency: str
    sku_prefix: str
    #: Price of a shared model here, relative to its US dollar base price.
    price_factor: float
    shoe_sizes: tuple[str, ...]
    brands: tuple[str, ...]
    #: Product types of its own models, each as often as it is to be drawn.
    mix: tuple[str, ...]

    def format_price(self, price: float) -> str:
        """The price as the shop writes it: "$1,249.00" or "1.249,00 €"."""
        text = f"{price:,.2f}"
        if self.currency == "USD":
            return "$" + text
        # European style: '.' groups thousands, ',' marks decimals, the sign comes after.
        return text.replace(",", " ").replace(".", ",").replace(" ", ".") + "\u00a0€"


def _mix(**weights: int) -> tuple[str, ...]:
    return tuple(kind.replace("_", "-") for kind, weight in weights.items() for _ in range(weight))


SHOPS: dict[str, Shop] = {
    "northwind": Shop(
        key="northwind",
        name="Northwind Outfitters",
        currency="USD",
        sku_prefix="NW",
        price_factor=1.0,
        shoe_sizes=("6", "7", "8", "9", "10", "11", "12"),
        brands=("Northwind Basics", "Ridgeline", "Copperfield"),
        mix=_mix(t_shirt=4, jeans=4, sneakers=3, shirt=3, sweater=3, jacket=3, dress=3, boots=2,
                 shoes=1, bag=1, skirt=1),
    ),
    "lumiere": Shop(
        key="lumiere",
        name="Lumière Paris",
        currency="EUR",
        sku_prefix="LM",
        price_factor=0.92,
        shoe_sizes=("36", "37", "38", "39", "40", "41", "42", "43", "44", "45"),
        brands=("Maison Clair", "Atelier Vey", "Sorelle"),
        mix=_mix(dress=5, skirt=3, scarf=3, bag=3, shirt=2, sweater=2, shoes=2, boots=2, jacket=2,
                 t_shirt=1, sneakers=1),
    ),
}

#: Models sold by both shops: their brands and mix of types.
SHARED_BRANDS = ("Kestrel", "Harbor & Pine", "Oakmere", "Solenne")
SHARED_MIX = _mix(dress=2, t_shirt=2, jeans=2, sweater=2, sneakers=2, shirt=1, skirt=1, jacket=1,
                  boots=1, bag=1, scarf=1, shoes=1)

#: Product type: (lowest, highest) base price in US dollars, materials, words for the title.
TYPES: dict[str, tuple[tuple[int, int], tuple[str, ...], tuple[str, ...]]] = {
    "dress": ((25, 260), ("cotton", "silk", "linen", "polyester"), ("Wrap", "Slip", "Midi", "Maxi", "Tiered")),
    "skirt": ((22, 140), ("cotton", "denim", "wool", "linen", "leather"), ("Pleated", "Pencil", "A-Line", "Wrap")),
    "shirt": ((25, 110), ("cotton", "linen", "silk", "polyester"), ("Oxford", "Poplin", "Camp", "Utility")),
    "t-shirt": ((12, 45), ("cotton", "cotton", "linen", "polyester"), ("Crew", "Pocket", "Boxy", "Ringer")),
    "jeans": ((39, 180), ("denim",), ("Slim", "Straight", "Relaxed", "Bootcut")),
    "sweater": ((35, 220), ("wool", "wool", "cotton"), ("Cable", "Crewneck", "Ribbed", "Fisherman")),
    "jacket": ((60, 1250), ("denim", "leather", "wool", "polyester", "cotton"), ("Bomber", "Field", "Biker", "Trucker")),
    "shoes": ((45, 300), ("leather",), ("Derby", "Loafer", "Oxford", "Ballet")),
    "sneakers": ((49, 220), ("leather", "polyester", "cotton"), ("Court", "Runner", "Low-Top", "High-Top")),
    "boots": ((70, 450), ("leather",), ("Chelsea", "Combat", "Ankle", "Hiker")),
    "bag": ((35, 1400), ("leather", "cotton", "polyester"), ("Tote", "Crossbody", "Bucket", "Shoulder")),
    "scarf": ((15, 180), ("wool", "silk", "cotton", "linen"), ("Fringed", "Square", "Long", "Twill")),
}  # fmt: skip
LETTER_SIZES = ("XS", "S", "M", "L", "XL")
WAIST_SIZES = ("26", "28", "30", "32", "34", "36")
ONE_SIZE = ("One Size",)
#: Colours, each as often as it is to be drawn.
COLORS = _mix(black=3, white=2, navy=2, red=2, blue=2, beige=1, grey=1, green=1, pink=1, brown=1)
#: Colour names a search may use for one of COLORS.
COLOR_SYNONYMS = {"gray": "grey"}
#: Listing dates count back from this day.
NEWEST = date(2026, 11, 1)

_SYLLABLES = ("ba", "ca", "da", "fe", "ki", "la", "li", "ma", "mi", "na", "no", "ra", "ri", "sa", "te", "vo")


def _number(*seed: object) -> int:
    """A number that only *seed* decides (Python's hash() changes with every process)."""
    digest = hashlib.blake2b(":".join(map(str, seed)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _pick(options: tuple[Any, ...], *seed: object) -> Any:
    return options[_number(*seed) % len(options)]


def _unit(*seed: object) -> float:
    """A number in [0, 1) that only *seed* decides."""
    return _number(*seed) / 2**64


def _style_name(n: int) -> str:
    """A distinct made-up word for each n ("Rila", "Vokasa"...): two-letter syllables, so
    two numbers never spell the same word."""
    syllables = []
    while True:
        n, digit = divmod(n, len(_SYLLABLES))
        # Shifted by position, so that the first syllables are not all alike.
        syllables.append(_SYLLABLES[(digit + 7 * len(syllables)) % len(_SYLLABLES)])
        if n == 0 and len(syllables) >= 2:
            break
    return "".join(syllables).capitalize()


def _run(options: tuple[str, ...], *seed: object) -> list[str]:
    """A run of neighbouring sizes, at least two long."""
    start = _number(*seed, "start") % (len(options) - 1)
    end = start + 2 + _number(*seed, "end") % (len(options) - start - 1)
    return list(options[start:end])


class Catalog:
    """One shop's products, computed from the arguments alone (no randomness)."""

    def __init__(self, shop: str, products: int = 300, per_page: int = 24) -> None:
        if shop not in SHOPS:
            raise ValueError(f"Unknown shop {shop!r}: one of {', '.join(SHOPS)}.")
        self.shop = SHOPS[shop]
        self.per_page = per_page
        self.products = [self._product(n) for n in range(1, products + 1)]
        self._by_sku = {product["sku"]: product for product in self.products}
        self.types = sorted(set(self.shop.mix) | set(SHARED_MIX))

    def _product(self, n: int) -> dict[str, Any]:
        shop = self.shop
        # Every third product is a model both shops sell; the others are the shop's own.
        # Shared and own models take their style names from disjoint sets of numbers.
        spaces = len(SHOPS) + 1
        if n % 3 == 0:
            model, brands, mix = n // 3 * spaces, SHARED_BRANDS, SHARED_MIX
        else:
            model = (n - n // 3) * spaces + 1 + list(SHOPS).index(shop.key)
            brands, mix = shop.brands, shop.mix
        kind = _pick(mix, model, "type")
        (low, high), materials, cuts = TYPES[kind]
        # Squared: more cheap things than dear ones, as in a real shop.
        base = low + (high - low) * _unit(model, "price") ** 2
        sku = f"{shop.sku_prefix}-{n:05d}"
        price = round(base * shop.price_factor * (0.85 + 0.3 * _unit(sku, "price")))
        price -= _pick((0.01, 0.05, 0.0, 0.5), sku, "cents")
        if kind in ("shoes", "sneakers", "boots"):
            sizes = _run(shop.shoe_sizes, sku, "sizes")
        elif kind == "jeans":
            sizes = _run(WAIST_SIZES, sku, "sizes")
        elif kind in ("bag", "scarf"):
            sizes = list(ONE_SIZE)
        else:
            sizes = _run(LETTER_SIZES, sku, "sizes")
        return {
            "sku": sku,
            "title": f"{_style_name(model)} {_pick(cuts, model, 'cut')} {kind.title()}",
            "brand": _pick(brands, model, "brand"),
            "type": kind,
            "color": _pick(COLORS, model, "color"),
            "material": _pick(materials, model, "material"),
            "size": sizes,
            "price": round(price, 2),
            "currency": shop.currency,
            "listed": (NEWEST - timedelta(days=_number(sku, "listed") % 730)).isoformat(),
            "rating": round(2.5 + 2.5 * _unit(sku, "rating"), 1),
            "reviews": 1 + _number(sku, "reviews") % 1500,
        }

    def product(self, sku: str) -> dict[str, Any] | None:
        return self._by_sku.get(sku)

    def listing(self, kind: str) -> list[dict[str, Any]] | None:
        """The products of one type, in sku order; None for a type the shop does not sell."""
        if kind not in self.types:
            return None
        return [product for product in self.products if product["type"] == kind]

    def search(
        self,
        type: str | None = None,
        color: str | list[str] | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        q: str | None = None,
    ) -> list[dict[str, Any]]:
        """The products the shop's search returns, in sku order. Prices are in the shop's
        currency, bounds included. A colour matches the product's colour, or any word of it
        does ("navy blue" finds navy, "light grey" grey); "gray" is grey. Every word of *q*
        must be in the title, brand, type, colour or material."""
        colors = [color] if isinstance(color, str) else list(color or [])
        wanted = {COLOR_SYNONYMS.get(word, word) for c in colors for word in [c.lower(), *c.lower().split()]}
        words = (q or "").lower().split()
        found = []
        for product in self.products:
            if type and product["type"] != type.lower():
                continue
            if wanted and product["color"] not in wanted:
                continue
            # In cents: 49.99 <= 49.99 must hold whatever binary floats make of them.
            cents = round(product["price"] * 100)
            if min_price is not None and cents < round(min_price * 100):
                continue
            if max_price is not None and cents > round(max_price * 100):
                continue
            text = " ".join(str(product[field]) for field in ("title", "brand", "type", "color", "material"))
            if not all(word in text.lower() for word in words):
                continue
            found.append(product)
        return found

    def page_count(self, products: list[dict[str, Any]]) -> int:
        # An empty listing still has a (blank) first page rather than a 404.
        return max(1, -(-len(products) // self.per_page))


def _page(shop: Shop, title: str, body: str) -> bytes:
    return (
        f'<!DOCTYPE html>\n<html lang="{"fr" if shop.currency == "EUR" else "en"}"><head>'
        f'<meta charset="utf-8"><title>{html.escape(title)} | {html.escape(shop.name)}</title>'
        f"</head>\n<body>\n{body}\n</body></html>\n"
    ).encode()


def render_home(catalog: Catalog) -> bytes:
    shop = catalog.shop
    items = "\n".join(
        f'<li><a class="category" href="/category/{kind}">{kind.title()}</a>'
        f' <span class="count">{len(catalog.listing(kind) or [])}</span></li>'
        for kind in catalog.types
    )
    form = (
        '<form class="search" action="/search" method="get">'
        '<input name="q"> <input name="type"> <input name="color">'
        ' <input name="min_price"> <input name="max_price"> <button>Search</button></form>'
    )
    body = (
        f'<h1 class="shop">{html.escape(shop.name)}</h1>\n'
        f'<p>Prices in <span class="currency">{shop.currency}</span></p>\n{form}\n'
        f'<ul class="categories">\n{items}\n</ul>'
    )
    return _page(shop, "Home", body)


def render_listing(catalog: Catalog, heading: str, products: list[dict[str, Any]],
                   page: int, link: str) -> bytes | None:
    """One page of *products*; *link* is the listing's URL up to its page number."""
    pages = catalog.page_count(products)
    if not 1 <= page <= pages:
        return None
    rows = [
        f'<li class="product"><a class="product-link" href="/product/{p["sku"]}">'
        f'{html.escape(p["title"])}</a> <span class="brand">{html.escape(p["brand"])}</span>'
        f' <span class="price">{catalog.shop.format_price(p["price"])}</span></li>'
        for p in products[(page - 1) * catalog.per_page : page * catalog.per_page]
    ]
    links = []
    if page > 1:
        links.append(f'<a rel="prev" href="{html.escape(link)}{page - 1}">Previous</a>')
    if page < pages:
        links.append(f'<a rel="next" href="{html.escape(link)}{page + 1}">Next</a>')
    body = (
        f'<h1 class="listing">{html.escape(heading)}</h1>\n'
        f'<p class="results"><span class="count">{len(products)}</span> products</p>\n'
        f'<p class="pagination">Page <span class="page">{page}</span> of '
        f'<span class="pages">{pages}</span></p>\n'
        '<ul class="products">\n' + "\n".join(rows) + "\n</ul>\n"
        f'<nav class="pager">{" ".join(links)}</nav>'
    )
    return _page(catalog.shop, f"{heading}, page {page}", body)


def render_product(catalog: Catalog, sku: str) -> bytes | None:
    p = catalog.product(sku)
    if p is None:
        return None
    listed = date.fromisoformat(p["listed"])
    shown = listed.strftime("%d/%m/%Y" if catalog.shop.currency == "EUR" else "%b %d, %Y")
    sizes = " ".join(f'<span class="size">{html.escape(size)}</span>' for size in p["size"])
    body = (
        f'<div class="product" itemscope itemtype="https://schema.org/Product">\n'
        f'<h1 class="title" itemprop="name">{html.escape(p["title"])}</h1>\n'
        f'<p>By <span class="brand" itemprop="brand">{html.escape(p["brand"])}</span></p>\n'
        f'<p>SKU: <span class="sku" itemprop="sku">{p["sku"]}</span></p>\n'
        '<p class="offer" itemprop="offers" itemscope itemtype="https://schema.org/Offer">'
        f'<span class="price">{catalog.shop.format_price(p["price"])}</span>'
        f'<meta itemprop="priceCurrency" content="{p["currency"]}"></p>\n'
        '<dl class="attributes">\n'
        f'<dt>Type</dt><dd><a class="type" href="/category/{p["type"]}">{p["type"].title()}</a></dd>\n'
        f'<dt>Colour</dt><dd class="color" itemprop="color">{p["color"].title()}</dd>\n'
        f'<dt>Material</dt><dd class="material" itemprop="material">{p["material"].title()}</dd>\n'
        f'<dt>Sizes</dt><dd class="sizes">{sizes}</dd>\n'
        "</dl>\n"
        f'<p>Listed <time class="listed" datetime="{p["listed"]}">{shown}</time></p>\n'
        '<p class="rating" itemprop="aggregateRating" itemscope'
        ' itemtype="https://schema.org/AggregateRating">'
        f'<span itemprop="ratingValue">{p["rating"]}</span> / 5'
        f' (<span itemprop="reviewCount">{p["reviews"]}</span> reviews)</p>\n'
        "</div>"
    )
    return _page(catalog.shop, p["title"], body)


def render_search(catalog: Catalog, query: dict[str, list[str]]) -> bytes | None:
    def last(name: str) -> str:
        return query.get(name, [""])[-1].strip()

    page = last("page") or "1"
    try:
        bounds = {name: float(last(name)) if last(name) else None for name in ("min_price", "max_price")}
    except ValueError:
        return None
    if not page.isdigit():
        return None
    found = catalog.search(type=last("type") or None, color=[c for c in query.get("color", []) if c],
                           q=last("q") or None, **bounds)
    # The next page's link keeps the filters as they were given.
    kept = [(name, value) for name, values in query.items() if name != "page" for value in values]
    link = "/search?" + urlencode([*kept, ("page", "")])
    return render_listing(catalog, "Search results", found, int(page), link)


class FashionShopHandler(ShopHandler):
    """The demo shop's request handling (log, latency, 404s) with the fashion shop's pages."""

    server: FashionShopServer
    server_version = "FashionShop/1.0"

    def _route(self) -> bytes | None:
        catalog = self.server.catalog
        parts = urlsplit(self.path)
        segments = [s for s in parts.path.split("/") if s]
        query = parse_qs(parts.query)
        if not segments:
            return render_home(catalog)
        if segments == ["search"]:
            return render_search(catalog, query)
        if len(segments) == 2 and segments[0] == "category":
            products = catalog.listing(segments[1])
            page = query.get("page", ["1"])[-1]
            if products is None or not page.isdigit():
                return None
            heading = segments[1].title()
            return render_listing(catalog, heading, products, int(page), f"/category/{segments[1]}?page=")
        if len(segments) == 2 and segments[0] == "product":
            return render_product(catalog, segments[1])
        return None


class FashionShopServer(ShopServer):
    catalog: Catalog  # type: ignore[assignment]

    def __init__(self, address: tuple[str, int], catalog: Catalog, latency: float = 0.0,
                 log_path: str | None = None) -> None:
        super().__init__(address, catalog, latency, log_path)  # type: ignore[arg-type]
        # ShopServer names the demo shop's handler; the socket only serves from
        # serve_forever() on, so swapping it here is in time.
        self.RequestHandlerClass = FashionShopHandler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", choices=sorted(SHOPS), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_non_negative(int), default=0, help="0 picks a free port")
    parser.add_argument("--products", type=_non_negative(int), default=300)
    parser.add_argument("--per-page", type=_positive_int, default=24)
    parser.add_argument(
        "--latency", type=_non_negative(float), default=0.0, help="seconds of sleep per response"
    )
    parser.add_argument("--log", default=None, help="append each served path to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    catalog = Catalog(args.shop, args.products, args.per_page)
    return serve(FashionShopServer((args.host, args.port), catalog, args.latency, args.log), args.shop, URL_PREFIX)


if __name__ == "__main__":
    sys.exit(main())
