"""Gin configuration files (folder importable so gin can include from it)."""
