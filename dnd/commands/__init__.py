"""One module per group of sub-commands; each `register(sub)` adds its parsers with a `handler` default."""
