"""Operator tools: exchange simulator, capture trimming, and friends."""
