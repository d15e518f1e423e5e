"""The bundled demo pipeline: a face detector on sample photos (see scripts/make_demo_assets.py)."""
