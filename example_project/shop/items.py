"""Items scraped from the demo shops."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Product:
    sku: str
    name: str
    price: float
    category: str
    url: str


@dataclass
class FashionProduct:
    """A product of a fashion shop, with the field names a query's aggregation looks for."""

    sku: str
    title: str
    brand: str
    type: str
    color: str
    material: str
    size: list[str]
    #: As the page shows it, in its currency: 1249.0 from "$1,249.00" or "1.249,00 €".
    price: float
    #: ISO 4217 code.
    currency: str
    #: ISO date it was listed on.
    listed: str
    rating: float
    reviews: int
    url: str
