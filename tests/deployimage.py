"""The image of the deploy tests (persistent disk, published ports, rate limits, cloud profiles), built once per
machine and reused while nothing changed (tests/imagecache.py): the default image with the built-in module
`persistent`, the built-in profiles `azure` and `gcp` (their cloud agent runs only without a sealbox instance disk, so
one image serves sealbox sandboxes and both clouds' stand-ins), and what the tests run in the guest: busybox's httpd
(from the cloud profiles) and socat (a UDP echo), their ports open in the guest's firewall."""

from __future__ import annotations

from pathlib import Path

from imagecache import spec_image

SPEC = """\
include = ["default", "persistent"]
name = "deploy"

[packages]
include = ["socat"]

[hardening]
firewall_allow_tcp = [8080]
firewall_allow_udp = [9000]

[output]
formats = ["initrd", "uki", "vhd", "gcp"]
compression_level = 3
"""
PROFILES = ["azure", "gcp"]


def deploy_image() -> Path:
    return spec_image("deploy", SPEC, PROFILES)
