"""A plugin that must never be imported unless enabled: importing it fails loudly."""

raise RuntimeError("tb_boom was imported")
