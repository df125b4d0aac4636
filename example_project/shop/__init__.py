"""Scrapy project crawling the demo shop, with checkpoints enabled."""
