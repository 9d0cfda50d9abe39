"""HTTP service (FastAPI): `service.app.create_app(settings)`; run with `dnd serve`."""
