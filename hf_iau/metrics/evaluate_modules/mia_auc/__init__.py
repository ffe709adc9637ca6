"""Folder of a local `evaluate` module (package marker so it ships in wheels)."""
