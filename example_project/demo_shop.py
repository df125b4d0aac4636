"""A small deterministic web shop on 127.0.0.1 for the checkpoint demo and end-to-end tests.

Run ``python demo_shop.py --port 0 --products 3000 --log shop.log``. The first line on
stdout is ``DEMO_SHOP_URL=http://127.0.0.1:PORT``; nothing else is printed. Pages:

- ``/``: links to every category.
- ``/category/<slug>`` and ``/category/<slug>?page=N``: one listing page, with links to
  its products and a ``rel="next"`` link while there is a next page.
- ``/product/<id>``: sku, name, price and category of product ``id`` (1..N).
- ``/login?delay=SECONDS``: a login that takes its time, then sets a ``session`` cookie.

The same arguments always give the same catalog, byte for byte, so a crawl can be
checked against it. ``--log`` appends the path of every served request, one per line.
"""

from __future__ import annotations

import argparse
import html
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

URL_PREFIX = "DEMO_SHOP_URL="

_CATEGORY_NAMES = [
    "Books", "Electronics", "Garden", "Kitchen", "Toys",
    "Sports", "Music", "Outdoors", "Beauty", "Games",
]  # fmt: skip
_ADJECTIVES = [
    "Classic", "Compact", "Deluxe", "Eco", "Handy", "Mini", "Modern", "Rugged",
    "Smart", "Vintage", "Wireless", "Premium", "Travel", "Family", "Pro",
]  # fmt: skip
_NOUNS = [
    "Lamp", "Kettle", "Backpack", "Speaker", "Notebook", "Chair", "Blender",
    "Puzzle", "Camera", "Planter", "Jacket", "Clock", "Guitar", "Mug",
]  # fmt: skip


class Catalog:
    """The shop's products, computed from the arguments alone (no randomness)."""

    def __init__(self, products: int, per_page: int, categories: int) -> None:
        self.products = products
        self.per_page = per_page
        self.categories = [
            (_CATEGORY_NAMES[i] if i < len(_CATEGORY_NAMES) else f"Category {i + 1}")
            for i in range(categories)
        ]
        self.slugs = [name.lower().replace(" ", "-") for name in self.categories]
        self._by_slug = {slug: index for index, slug in enumerate(self.slugs)}

    def category_of(self, product_id: int) -> int:
        # Round robin keeps every category's listing in id order and equally long.
        return (product_id - 1) % len(self.categories)

    def product(self, product_id: int) -> dict[str, object]:
        return {
            "id": product_id,
            "sku": f"SKU-{product_id:06d}",
            "name": (
                f"{_ADJECTIVES[product_id % len(_ADJECTIVES)]} "
                f"{_NOUNS[(product_id // len(_ADJECTIVES)) % len(_NOUNS)]} {product_id}"
            ),
            "price": round(1 + (product_id * 7919) % 49_900 / 100, 2),
            "category": self.categories[self.category_of(product_id)],
            "slug": self.slugs[self.category_of(product_id)],
        }

    def listing(self, slug: str) -> list[int] | None:
        index = self._by_slug.get(slug)
        if index is None:
            return None
        return list(range(index + 1, self.products + 1, len(self.categories)))

    def page_count(self, ids: list[int]) -> int:
        # An empty category still has a (blank) first page rather than a 404.
        return max(1, -(-len(ids) // self.per_page))


def _page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)} | Demo shop</title></head>\n<body>\n{body}\n"
        "</body></html>\n"
    ).encode()


def render_home(catalog: Catalog) -> bytes:
    items = "\n".join(
        f'<li><a class="category" href="/category/{slug}">{html.escape(name)}</a>'
        f' <span class="count">{len(catalog.listing(slug) or [])}</span></li>'
        for name, slug in zip(catalog.categories, catalog.slugs)
    )
    return _page("Home", f'<h1>Demo shop</h1>\n<ul class="categories">\n{items}\n</ul>')


def render_category(catalog: Catalog, slug: str, page: int) -> bytes | None:
    ids = catalog.listing(slug)
    if ids is None:
        return None
    pages = catalog.page_count(ids)
    if not 1 <= page <= pages:
        return None
    name = catalog.categories[catalog.slugs.index(slug)]
    rows = []
    for product_id in ids[(page - 1) * catalog.per_page : page * catalog.per_page]:
        product = catalog.product(product_id)
        rows.append(
            f'<li class="product"><a class="product-link" href="/product/{product_id}">'
            f'{html.escape(str(product["name"]))}</a>'
            f' <span class="price">{product["price"]:.2f}</span></li>'
        )
    links = []
    if page > 1:
        links.append(f'<a rel="prev" href="/category/{slug}?page={page - 1}">Previous</a>')
    if page < pages:
        links.append(f'<a rel="next" href="/category/{slug}?page={page + 1}">Next</a>')
    body = (
        f'<h1 class="category-name">{html.escape(name)}</h1>\n'
        f'<p class="pagination">Page <span class="page">{page}</span> of '
        f'<span class="pages">{pages}</span></p>\n'
        f'<ul class="products">\n' + "\n".join(rows) + "\n</ul>\n"
        f'<nav class="pager">{" ".join(links)}</nav>'
    )
    return _page(f"{name}, page {page}", body)


def render_product(catalog: Catalog, product_id: int) -> bytes | None:
    if not 1 <= product_id <= catalog.products:
        return None
    p = catalog.product(product_id)
    body = (
        f'<div class="product" data-id="{product_id}">\n'
        f'<h1 class="name">{html.escape(str(p["name"]))}</h1>\n'
        f'<p>SKU: <span class="sku">{p["sku"]}</span></p>\n'
        f'<p>Price: <span class="price" data-currency="USD">{p["price"]:.2f}</span></p>\n'
        f'<p>Category: <a class="category" href="/category/{p["slug"]}">'
        f'{html.escape(str(p["category"]))}</a></p>\n'
        "</div>"
    )
    return _page(str(p["name"]), body)


class ShopHandler(BaseHTTPRequestHandler):
    """Serves the catalog; settings come from the server instance."""

    server: ShopServer
    # HTTP/1.1 lets Scrapy keep connections alive, which matters at thousands of pages.
    protocol_version = "HTTP/1.1"
    server_version = "DemoShop/1.0"

    def do_GET(self) -> None:
        self.server.record(self.path)
        if self.server.latency:
            time.sleep(self.server.latency)
        body = self._route()
        status = HTTPStatus.OK
        if body is None:
            status = HTTPStatus.NOT_FOUND
            body = _page("Not found", "<h1>Not found</h1>")
        self.send_response(status)
        if urlsplit(self.path).path == "/login":
            self.send_header("Set-Cookie", "session=demo; Path=/")
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> bytes | None:
        catalog = self.server.catalog
        parts = urlsplit(self.path)
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            return render_home(catalog)
        if segments == ["login"]:
            # A slow login, as a real one can be: ?delay=SECONDS before the session cookie.
            time.sleep(float(parse_qs(parts.query).get("delay", ["0"])[-1]))
            return _page("Logged in", "<h1>Logged in</h1>")
        if len(segments) == 2 and segments[0] == "category":
            raw_page = parse_qs(parts.query).get("page", ["1"])[-1]
            if not raw_page.isdigit():
                return None
            return render_category(catalog, segments[1], int(raw_page))
        if len(segments) == 2 and segments[0] == "product" and segments[1].isdigit():
            return render_product(catalog, int(segments[1]))
        return None

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        # The request log is --log; per-request stderr lines would drown the demo output.
        pass


class ShopServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        catalog: Catalog,
        latency: float = 0.0,
        log_path: str | None = None,
    ) -> None:
        super().__init__(address, ShopHandler)
        self.catalog = catalog
        self.latency = latency
        self._log_lock = threading.Lock()
        # Line buffered and flushed per line: the crawler under test gets SIGKILLed, and
        # the log must still show every page the shop served before that.
        self._log = open(log_path, "a", buffering=1, encoding="utf-8") if log_path else None

    def record(self, path: str) -> None:
        if self._log is None:
            return
        with self._log_lock:
            self._log.write(path + "\n")
            self._log.flush()

    def handle_error(self, request: object, client_address: object) -> None:
        # A crawler killed mid-response resets its connections; that is the point of
        # the demo, not an error worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        if self._log is not None:
            with self._log_lock:
                self._log.close()
                self._log = None


def _non_negative(kind: type) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_non_negative(int), default=0, help="0 picks a free port")
    parser.add_argument("--products", type=_non_negative(int), default=3000)
    parser.add_argument("--per-page", type=_positive_int, default=20)
    parser.add_argument("--categories", type=_positive_int, default=5)
    parser.add_argument(
        "--latency", type=_non_negative(float), default=0.0, help="seconds of sleep per request"
    )
    parser.add_argument("--log", default=None, help="append each served path to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    catalog = Catalog(args.products, args.per_page, args.categories)
    return serve(ShopServer((args.host, args.port), catalog, args.latency, args.log), "demo-shop", URL_PREFIX)


def serve(server: ThreadingHTTPServer, name: str, url_prefix: str) -> int:
    """Serve until SIGTERM or SIGINT; the first line on stdout is *url_prefix* and the URL."""
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Serving from a thread leaves the main thread free to run the signal handlers;
    # shutdown() cannot be called from the thread running serve_forever().
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    print(f"{url_prefix}http://{host}:{port}", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
