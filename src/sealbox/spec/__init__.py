"""The image spec: declarative settings, TOML loading, includes, profiles and merging."""

from sealbox.spec.load import load_spec, LoadedSpec  # noqa: F401
from sealbox.spec.model import ImageSpec  # noqa: F401
