"""Adapters: the store backends, the source readers, the publishers, the YAML loader."""
