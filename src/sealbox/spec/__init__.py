"""The image spec: declarative settings, TOML loading, includes, profiles and merging."""

from sealbox.spec.load import LoadedSpec, load_spec
from sealbox.spec.model import ImageSpec

__all__ = ["ImageSpec", "LoadedSpec", "load_spec"]
