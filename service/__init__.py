"""HTTP service (FastAPI) around the detector; built in a later issue."""
