"""Items scraped from the demo shop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Product:
    sku: str
    name: str
    price: float
    category: str
    url: str
