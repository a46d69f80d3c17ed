"""Model families, one folder each; `mindformers/__init__.py` imports them, which registers them."""
