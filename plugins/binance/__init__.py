"""Binance market-data plugin: capture formats, feed handling."""
