"""The web console (``/ui``): static pages that are a client of the existing APIs.

``routes.py`` serves the files under ``static/`` with a strict Content-Security-Policy
and a small ``config.json`` (mode, whether actions are allowed, where the public API
is); ``proxy.py`` lets a controller's console reach one gateway's public API on the
same origin. The console holds no authority of its own: every admin call carries the
operator's admin token in a header, as the CLI's do.
"""
