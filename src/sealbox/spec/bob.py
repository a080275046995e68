"""The `[bob]` section: the searcher-sandbox module's settings (docs/modules.md, `bob`).

Ports are the guest's own (where it listens, or the remote port it connects to); builder endpoints are IP
addresses with a port, never host names: in production mode the guest has no DNS, and a firewall rule needs
an address. The rule sets built from these settings are sealbox.guest.bob_firewall's.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath

from pydantic import field_validator, model_validator

from sealbox.spec.fields import Section, setting

ENDPOINT_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>[0-9]{1,5})$")
MAX_ENDPOINTS = 16
MAX_DELAY = 7 * 86400  # a week: beyond that a delay is a typo, not a policy
MAX_ARGS = 64

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_endpoint(text: str) -> tuple[Address, int]:
    """'192.0.2.7:8645' or '[2001:db8::7]:8645' -> (address, port); ValueError naming the text otherwise."""
    m = ENDPOINT_RE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not ADDRESS:PORT (an IPv4 address, or an IPv6 address in brackets, then a port)")
    try:
        addr = ipaddress.ip_address(m.group("v6") or m.group("v4"))
    except ValueError:
        raise ValueError(f"{text!r}: {m.group('v6') or m.group('v4')!r} is not an IP address") from None
    if (m.group("v6") is None) != (addr.version == 4):
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, an IPv4 one does not")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is not a port number (1-65535)")
    if addr.is_unspecified or addr.is_multicast:
        raise ValueError(f"{text!r}: {addr} names no single host")
    return addr, port


def _port(default: int, doc: str) -> int:
    result: int = setting(default, doc, ge=1, le=65535)
    return result


class Bob(Section):
    """Searcher sandbox: modes, their firewall, the searcher's command shell (module bob)."""

    enable: bool = setting(False, "Build a searcher sandbox (set by the built-in module bob; include = [\"bob\"]).")
    control_ssh_port: int = _port(22, "Control plane SSH (the searcher's command shell): open in every mode.")
    data_ssh_port: int = _port(10022, "Data plane SSH into the searcher's container: open in maintenance only.")
    key_registration_port: int = _port(8080, "One-time key registration endpoint (HTTP): open in maintenance only.")
    attestation_port: int = _port(8745, "The guest's attestation endpoint (TCP, incoming): open in every mode.")
    input_only_udp_port: int = _port(27017, "Input-only UDP channel into the container: accepted in, in every mode; "
                                     "nothing with this source port (UDP or TCP) ever leaves the guest.")
    el_p2p_port: int = _port(30303, "Execution-layer peer-to-peer port (TCP and UDP, both directions): maintenance only.")
    cl_p2p_port: int = _port(9000, "Consensus-layer peer-to-peer port (TCP and UDP, both directions): every mode.")
    builder_bundle: list[str] = setting([], "Builder endpoints bundles are submitted to (ADDRESS:PORT, outgoing TCP, every "
                                        "mode); at least one when enable.", merge="override")
    builder_state_diff: list[str] = setting([], "Builder endpoints of the state-diff stream (ADDRESS:PORT, outgoing TCP, "
                                            "production only); at least one when enable.", merge="override")
    dwell_seconds: int = setting(300, "Time production must be over before the guest returns to maintenance "
                                 "(measured by the guest's clock, which the host controls).", ge=0, le=MAX_DELAY)
    log_delay_seconds: int = setting(120, "Delay before a container log line reaches /persistent/delayed_logs.",
                                     ge=0, le=MAX_DELAY)
    workload: str = setting("", "The searcher's container: an OCI archive (.tar, output.formats = [\"oci\"] of another "
                            "spec), relative to the spec file that names it; required when enable.")

    node_command: list[str] = setting([], "The operator's node service (no Ethereum client is packaged in Debian: ship it "
                                      "with [[files]]): its argv, an absolute program path first. Run as user bob-node "
                                      "in /persistent/node once /persistent is mounted, in every mode; its IPC socket "
                                      "goes in /run/sealbox-bob-node, which the container sees read-only at /node. "
                                      "Empty: no node service.", merge="override")

    @field_validator("node_command")
    @classmethod
    def _node_command(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_ARGS:
            raise ValueError(f"{len(v)} arguments: at most {MAX_ARGS}")
        for i, arg in enumerate(v):
            if any(c in arg for c in "\x00\n") or len(arg) > 4096:
                raise ValueError(f"argument {i} holds a NUL or a newline, or is longer than 4096 characters")
        if v and not PurePosixPath(v[0]).is_absolute():
            raise ValueError(f"{v[0]!r} must be the program's absolute path in the image (e.g. \"/usr/local/bin/node\")")
        return v

    @field_validator("builder_bundle", "builder_state_diff")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_ENDPOINTS:
            raise ValueError(f"{len(v)} endpoints: at most {MAX_ENDPOINTS}")
        out = []
        for text in v:
            addr, port = parse_endpoint(text)
            out.append(f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}")
        if len(set(out)) != len(out):
            raise ValueError("an endpoint is listed twice")
        return out

    @field_validator("workload")
    @classmethod
    def _workload(cls, v: str) -> str:
        if not v:
            return v
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or "\x00" in v or not v.endswith(".tar"):
            raise ValueError(f"{v!r} must be a relative path to a .tar OCI archive beside the spec, without '..'")
        return v

    @model_validator(mode="after")
    def _ports_distinct(self) -> Bob:
        tcp = {"control_ssh_port": self.control_ssh_port, "data_ssh_port": self.data_ssh_port,
               "key_registration_port": self.key_registration_port, "attestation_port": self.attestation_port,
               "el_p2p_port": self.el_p2p_port, "cl_p2p_port": self.cl_p2p_port}
        udp = {"input_only_udp_port": self.input_only_udp_port, "el_p2p_port": self.el_p2p_port, "cl_p2p_port": self.cl_p2p_port}
        for proto, ports in (("TCP", tcp), ("UDP", udp)):
            seen: dict[int, str] = {}
            for key, port in ports.items():
                if port in seen:
                    raise ValueError(f"{key} = {port} is also {seen[port]} ({proto}): give each plane its own port")
                seen[port] = key
        if self.input_only_udp_port in tcp.values():
            owner = next(k for k, p in tcp.items() if p == self.input_only_udp_port)
            raise ValueError(f"input_only_udp_port = {self.input_only_udp_port} is also {owner} (TCP): nothing with that source "
                             "port may leave the guest, so it cannot also serve TCP: choose another port")
        return self

    def missing(self) -> str | None:
        """With enable: the first required setting left empty, as a one-line error with its fix; else None."""
        if not self.enable:
            return None
        if not self.builder_bundle:
            return 'bob.builder_bundle: no endpoint: set e.g. builder_bundle = ["192.0.2.10:8645"] (the builder\'s bundle API)'
        if not self.builder_state_diff:
            return 'bob.builder_state_diff: no endpoint: set e.g. builder_state_diff = ["192.0.2.10:8646"] (the builder\'s stream)'
        if not self.workload:
            return ('bob.workload: no workload: set workload = "searcher.oci.tar" (an OCI archive sealbox built from a '
                    'second spec with output.formats = ["oci"])')
        return None
