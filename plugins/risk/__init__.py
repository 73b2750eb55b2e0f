"""Pre-trade risk: every ``ord.request`` is checked, then accepted or rejected with the rule."""
