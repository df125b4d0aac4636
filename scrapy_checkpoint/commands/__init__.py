"""Scrapy commands of the package, registered under the ``scrapy.commands`` entry point group."""
