"""The swagger -> JSON Schema converter and validator, on the v1.16.1 vector and on small documents."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from fc_testlib import spec_path

from sealbox.errors import SandboxError
from sealbox.sandbox.vmm.firecracker.schema import FirecrackerSpec, SchemaError, load_spec, swagger_to_jsonschema

VALID = {
    "boot-source": {"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0", "initrd_path": "/initrd.img"},
    "drives": [{"drive_id": "instance", "path_on_host": "/instance.img", "is_root_device": False, "is_read_only": True}],
    "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": False},
    "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:aa:bb:cc:dd:ee"}],
    "logger": {"log_path": "/firecracker.log", "level": "Warning"},
    "metrics": {"metrics_path": "/firecracker.metrics"},
}


@pytest.fixture(scope="module")
def spec() -> FirecrackerSpec:
    return load_spec(str(spec_path()))


def test_every_definition_converts_to_a_valid_draft7_schema(spec: FirecrackerSpec) -> None:
    assert spec.version == "1.16.1"
    assert len(spec.definitions) == 44
    jsonschema.Draft7Validator.check_schema(spec.root)

    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                if k != "properties":  # property *names* may be anything
                    yield from keys(v)
                else:
                    for sub in v.values():
                        yield from keys(sub)
        elif isinstance(node, list):
            for item in node:
                yield from keys(item)

    found = set(keys(spec.definitions))
    assert not {k for k in found if k.startswith("x-")} and not found & {"example", "readOnly"}


def test_a_valid_config_validates(spec: FirecrackerSpec) -> None:
    assert spec.errors("FullVmConfiguration", VALID) == []


MUTATIONS = [
    ("missing kernel", lambda c: c["boot-source"].pop("kernel_image_path"), "kernel_image_path"),
    ("vcpu 0", lambda c: c["machine-config"].update(vcpu_count=0), "vcpu_count"),
    ("vcpu 33", lambda c: c["machine-config"].update(vcpu_count=33), "vcpu_count"),
    ("memory as text", lambda c: c["machine-config"].update(mem_size_mib="256"), "mem_size_mib"),
    ("unknown top-level key", lambda c: c.update(network_interfaces=[]), "network_interfaces"),
    ("unknown drive key", lambda c: c["drives"][0].update(readonly=True), "readonly"),
    ("bad cache type", lambda c: c["drives"][0].update(cache_type="Fast"), "cache_type"),
    ("drive without is_root_device", lambda c: c["drives"][0].pop("is_root_device"), "is_root_device"),
    ("negative bucket", lambda c: c["drives"][0].update(rate_limiter={"bandwidth": {"size": -1, "refill_time": 100}}), "size"),
    ("bucket without refill", lambda c: c["drives"][0].update(rate_limiter={"ops": {"size": 10}}), "refill_time"),
    ("int64 overflow", lambda c: c["drives"][0].update(rate_limiter={"ops": {"size": 2**63, "refill_time": 1}}), "size"),
    ("bad log level", lambda c: c["logger"].update(level="Verbose"), "level"),
    ("metrics without path", lambda c: c.update(metrics={}), "metrics_path"),
    ("iface without tap", lambda c: c["network-interfaces"][0].pop("host_dev_name"), "host_dev_name"),
    ("drives not a list", lambda c: c.update(drives={}), "drives"),
    ("mtu too small", lambda c: c["network-interfaces"][0].update(mtu=10), "mtu"),
    ("mmds address outside link-local", lambda c: c.update({"mmds-config": {"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}}),
     "ipv4_address"),
    ("boolean as vcpu", lambda c: c["machine-config"].update(vcpu_count=True), "vcpu_count"),
]


@pytest.mark.parametrize("label,mutate,needle", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_the_validator_rejects_wrong_configs(spec: FirecrackerSpec, label: str, mutate, needle: str) -> None:
    cfg = copy.deepcopy(VALID)
    mutate(cfg)
    errors = spec.errors("FullVmConfiguration", cfg)
    assert errors, label
    assert any(needle in e for e in errors), errors
    with pytest.raises(SandboxError, match="does not match Firecracker 1.16.1 FullVmConfiguration"):
        spec.validate("FullVmConfiguration", cfg, what="test config")


def test_mmds_regex_format_becomes_an_anchored_pattern(spec: FirecrackerSpec) -> None:
    ok = {"network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254"}
    assert spec.errors("MmdsConfig", ok) == []
    assert spec.errors("MmdsConfig", {**ok, "ipv4_address": "169.254.169.254.1"})
    assert "pattern" in spec.definitions["MmdsConfig"]["properties"]["ipv4_address"]


def test_non_strict_mode_allows_extra_keys() -> None:
    import yaml

    loose = FirecrackerSpec(yaml.safe_load(spec_path().read_text()), strict=False)
    cfg = copy.deepcopy(VALID)
    cfg["drives"][0]["extra"] = 1
    assert loose.errors("FullVmConfiguration", cfg) == []


def test_swagger_isms_on_a_small_document() -> None:
    doc = {
        "swagger": "2.0",
        "definitions": {
            "A": {"type": "object", "x-internal": True, "required": ["b"], "example": {"b": {}},
                  "properties": {"b": {"$ref": "#/definitions/B", "description": "ignored sibling"},
                                 "n": {"type": "integer", "format": "int32", "minimum": 5}}},
            "B": {"type": "object", "additionalProperties": True, "properties": {"s": {"type": "string", "x-nullable": True}}},
        },
    }
    root = swagger_to_jsonschema(doc)
    a = root["definitions"]["A"]
    assert "x-internal" not in a and "example" not in a
    assert a["properties"]["b"] == {"$ref": "#/definitions/B"}
    assert a["properties"]["n"]["minimum"] == 5 and a["properties"]["n"]["maximum"] == 2**31 - 1
    assert a["additionalProperties"] is False
    assert root["definitions"]["B"]["additionalProperties"] is True
    assert "x-nullable" not in root["definitions"]["B"]["properties"]["s"]


def test_a_dangling_ref_is_a_clear_error() -> None:
    doc = {"swagger": "2.0", "definitions": {"A": {"properties": {"b": {"$ref": "#/definitions/Nope"}}}}}
    with pytest.raises(SchemaError, match="Nope"):
        swagger_to_jsonschema(doc)


def test_unknown_definition_and_unreadable_spec(spec: FirecrackerSpec, tmp_path) -> None:
    with pytest.raises(SchemaError, match="no definition"):
        spec.errors("Nope", {})
    with pytest.raises(SchemaError, match="cannot read"):
        load_spec(str(tmp_path / "missing.yaml"))
    (tmp_path / "x.yaml").write_text("openapi: 3.0.0\n")
    with pytest.raises(SchemaError, match="not a swagger 2.0"):
        load_spec(str(tmp_path / "x.yaml"))


def test_operations_table_matches_templates(spec: FirecrackerSpec) -> None:
    op, params = spec.find_operation("PATCH", "/drives/rootfs")
    assert op.operation_id == "patchGuestDriveByID" and params == {"drive_id": "rootfs"}
    assert spec.find_operation("GET", "/drives/rootfs") is None
    assert spec.find_operation("PUT", "/actions")[0].body_required
    assert spec.find_operation("GET", "/")[0].body_definition is None
    assert "/snapshot/load" in set(spec.paths())
