"""Built-in tickbus plugins: one package each, registered as entry points like any other."""
