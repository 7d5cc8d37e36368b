"""The box mirror: the on-disk store, fetch and import, verification, and serving it over HTTP."""
