"""Every built-in module and profile, alone and in the combinations the docs show, as test images.

Each is the real CLI path (`sealbox build SPEC --profile ...`) on a small spec that differs from what a user
would write only in a low zstd level (these bytes do not matter here; the default image keeps level 19).
Built once per machine (tests/imagecache.py) and shared by the builder and runtime integration tests.
"""

from __future__ import annotations

from pathlib import Path

from imagecache import default_image, spec_image

FAST = "\n[output]\ncompression_level = 3\n"

# the README's own example (README.md "Image specs"), built as `sealbox build bob.toml --profile edge,azure,devtools`
README_BOB = """\
include = ["base"]
name = "bob"

[packages]
include = ["curl", "ca-certificates"]

[[files]]
source = "files/app"
dest = "/opt/app"

[hardening]
firewall_allow_tcp = [8080]

[profiles.edge]
kernel.package = "linux-image-6.12-cloud-amd64"
"""

# key -> (spec text, profiles, files beside the spec); "default" is the built-in default spec (module base)
CASES: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "profile-devtools": ('include = ["default"]\nname = "p-devtools"\n' + FAST, ["devtools"], {}),
    "profile-tdx": ('include = ["default"]\nname = "p-tdx"\n' + FAST, ["tdx"], {}),
    "readme-azure-devtools": (README_BOB.replace("[hardening]", FAST.strip() + "\n\n[hardening]"), ["edge", "azure", "devtools"],
                              {"files/app": "#!/bin/sh\necho app\n"}),
}


def image(key: str) -> Path:
    if key == "default":
        return default_image()
    text, profiles, files = CASES[key]
    return spec_image(key, text, profiles, files)
