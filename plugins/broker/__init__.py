"""The ``paper_broker`` plugin: a simulated venue and account - the order lifecycle, fills
from the real book and trades (queue position, latency, fees), exact positions and PnL."""
