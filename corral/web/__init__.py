"""HTTP building blocks shared by every Corral server (gateway, worker, controller):
pure-ASGI middlewares, bounded body reading, JSON responses."""
