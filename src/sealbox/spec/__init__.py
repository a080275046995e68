"""The image spec: declarative settings, TOML loading, includes, profiles and merging."""

from sealbox.spec.load import LoadedSpec, load_spec  # noqa: F401
from sealbox.spec.model import ImageSpec  # noqa: F401
