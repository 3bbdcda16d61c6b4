"""uWSGI entry point (``module = wsgi:app``). Imported in each worker after the fork (lazy-apps)."""

from inference import create_app

app = create_app()
