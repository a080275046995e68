"""The gui module's test image, built once per machine (tests/imagecache.py) and shared by the builder and runtime
integration tests: the module as a user includes it, with a root disk instead of an initramfs (`run --rootfs disk`:
no 300 MB archive to compress, nor to unpack into RAM) and a low zstd level for the loader."""

from __future__ import annotations

from pathlib import Path

from imagecache import spec_image

KEY = "gui"
SPEC = """\
include = ["base", "gui"]
name = "gui-test"

[output]
formats = ["ext4"]
compression_level = 3
"""


def gui_image() -> Path:
    return spec_image(KEY, SPEC)


def gui_spec_path() -> Path:
    """The spec file gui_image() builds (its lock beside the image cache), for verify-reproducible."""
    from imagecache import CACHE

    gui_image()
    return CACHE / "specs" / KEY / "spec.toml"
