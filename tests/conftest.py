"""Suite-wide: tests/ is importable (pytest's rootdir-prepend mode puts this directory on sys.path)."""
