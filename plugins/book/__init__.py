"""Local order book plugin: exact fixed-point book kept in sync from ``md.depth`` messages."""
