"""The bob image's wiring (module bob, docs/modules.md): what the builder writes and enables when bob.enable.

The module's TOML (modules/bob.toml) brings the packages, the `searcher` account and the guest programs; this adds
what depends on the [bob] settings or must not be left to a spec:
- the control plane sshd configuration, which REPLACES the base one (guest/files/sshd-sealbox.conf): searcher only,
  key from the one-time registration only, no forwarding of any kind, no root login. sealbox's own root management
  path (the sandbox key that `sealbox run` delivers for root) is never authorised, so `exec`/`ssh` cannot work;
- the boot unit that loads the maintenance rule set before the network comes up (sealbox-instance requires it: no
  rule set, no network, no sshd, no ready marker), the one-time key registration service, the mode service behind
  its socket (the searcher's shell relays `status`/`toggle` to it);
- each mode's rule set and config.json (builder/bob_firewall.py), and the workload archive, read-only.
The SSH host key is the base image's: made at every boot in RAM (sealbox-sshd-keys), none in the image.

Also enabled: the disk service behind `initialize` (bob_disk.py, its units in modules/bob) and attested first
contact (bob_attest.py; its HTTP unit gets the attestation port here). The searcher's container: its packages,
programs and units come from modules/bob.toml; here the data plane sshd is enabled (the workload and log units are
started by `bob-mode resume`), searcher gets subordinate ids and a password field sshd accepts with UsePAM no, and
Debian's AcceptEnv goes; bob-workload reads the archive at WORKLOAD. The data-plane sshd's own config is outside
/etc/ssh/sshd_config.d (which the control plane's sshd includes): /usr/lib/sealbox/bob/sshd-data.conf.
"""

from __future__ import annotations

from sealbox.builder import bob_firewall
from sealbox.builder.intree import Tree
from sealbox.errors import BuildError
from sealbox.spec.bob import Bob
from sealbox.spec.load import LoadedSpec, modules_dir

LIB = bob_firewall.LIB  # /usr/lib/sealbox/bob: the guest programs, rule sets and config.json
WORKLOAD_DIR = "/usr/share/sealbox/bob"
WORKLOAD = f"{WORKLOAD_DIR}/workload.tar"  # bob_workload.ARCHIVE  # the searcher's container image, as the spec named it (read-only)
RUN_DIR = "/run/sealbox-bob"
KEY_FILE = f"{RUN_DIR}/authorized_keys"  # written once by bob-keyreg; the only key sshd accepts (for searcher)
MODE_SOCKET = f"{RUN_DIR}/mode.sock"
USER = "searcher"
SSHD_CONF = "/etc/ssh/sshd_config.d/00-sealbox.conf"  # the base image's path: bob's file takes its place
DEBIAN_SSHD_CONF = "/etc/ssh/sshd_config"
FIREWALL_UNIT = "sealbox-bob-firewall.service"
KEYREG_UNIT = "sealbox-bob-keyreg.service"
MODE_SOCKET_UNIT = "sealbox-bob-mode.socket"
MODE_SERVICE = "sealbox-bob-mode@.service"
ATTEST_UNIT = "sealbox-bob-attest.service"  # its template is modules/bob's (@PORT@: attestation_port)
# installed by modules/bob.toml's files[] (they depend on no setting), enabled here
MODULE_UNITS = ("sealbox-bob-disk-boot.service", "sealbox-bob-disk.socket", "sealbox-bob-attest-quote.socket",
                "sealbox-bob-data-sshd.service")  # not the workload's and log writer's: `bob-mode resume` starts them
# enabled; sealbox's own, so not ordered after the ready marker
UNITS = (FIREWALL_UNIT, KEYREG_UNIT, MODE_SOCKET_UNIT, ATTEST_UNIT, *MODULE_UNITS)
PERSISTENT = "/persistent"  # bob-disk mounts the unlocked disk here (the root is read-only)
UNIT_DIR = "/usr/lib/systemd/system"
# rootless podman maps the container's uids into these (newuidmap); fixed, so every build writes the same bytes
SUBIDS = f"{USER}:{bob_firewall.SEARCHER_SUBUIDS[0]}:{bob_firewall.SEARCHER_SUBUIDS[1] - bob_firewall.SEARCHER_SUBUIDS[0] + 1}\n".encode()


def sshd_config(bob: Bob) -> bytes:
    """Control plane sshd: the first value of a keyword wins, and Debian's sshd_config includes this file first."""
    return f"""\
# sealbox bob: the control plane. Only `searcher`, whose login shell (bob-shell) runs five commands and nothing else,
# with the one key registered over HTTP (bob-keyreg). No root login: sealbox's management path is off in bob images.
Port {bob.control_ssh_port}
HostKey /run/sealbox/ssh/ssh_host_ed25519_key
AllowUsers {USER}
PermitRootLogin no
AuthorizedKeysFile {KEY_FILE}
AuthorizedKeysCommand none
AuthorizedPrincipalsFile none
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
HostbasedAuthentication no
GSSAPIAuthentication no
DisableForwarding yes
AllowTcpForwarding no
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PermitOpen none
PermitListen none
GatewayPorts no
PermitTTY no
PermitUserRC no
PermitUserEnvironment no
UseDNS no
PrintMotd no
PrintLastLog no
MaxAuthTries 3
MaxSessions 2
LoginGraceTime 30
""".encode()


FIREWALL = f"""\
[Unit]
Description=sealbox bob: the mode rule set, loaded before the network
DefaultDependencies=no
After=systemd-modules-load.service sealbox-early.service
Before=network-pre.target sealbox-instance.service ssh.service {KEYREG_UNIT}
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
# maintenance until /persistent is unlocked (`initialize` then resumes the recorded mode); stopped if that fails
ExecStart={LIB}/bob-mode boot
StandardError=journal+console

[Install]
# the network, and with it sshd and the ready marker, never come up without a rule set
RequiredBy=sealbox-instance.service
"""

KEYREG = f"""\
[Unit]
Description=sealbox bob: one-time key registration for searcher (HTTP)
After={FIREWALL_UNIT}
Requires={FIREWALL_UNIT}

[Service]
ExecStart={LIB}/bob-keyreg @PORT@
Restart=on-failure
RestartSec=1
UMask=0022
NoNewPrivileges=yes
PrivateTmp=yes
ProtectHome=yes

[Install]
WantedBy=multi-user.target
"""

MODE_SOCKET_TEXT = f"""\
[Unit]
Description=sealbox bob: the mode service's socket (the searcher's shell asks through it)

[Socket]
ListenStream={MODE_SOCKET}
Accept=yes
SocketUser=root
SocketGroup={USER}
SocketMode=0660
DirectoryMode=0755
MaxConnections=4

[Install]
WantedBy=sockets.target
"""

MODE_SERVICE_TEXT = f"""\
[Unit]
Description=sealbox bob: one mode request (status, toggle)

[Service]
ExecStart={LIB}/bob-mode serve
StandardInput=socket
StandardOutput=socket
StandardError=journal
RuntimeMaxSec=180
"""


def units(bob: Bob) -> dict[str, bytes]:
    attest = (modules_dir() / "bob" / ATTEST_UNIT).read_text().replace("@PORT@", str(bob.attestation_port))
    return {FIREWALL_UNIT: FIREWALL.encode(), KEYREG_UNIT: KEYREG.replace("@PORT@", str(bob.key_registration_port)).encode(),
            MODE_SOCKET_UNIT: MODE_SOCKET_TEXT.encode(), MODE_SERVICE: MODE_SERVICE_TEXT.encode(), ATTEST_UNIT: attest.encode()}


def install(t: Tree, loaded: LoadedSpec) -> list[str]:
    """Write bob's files into the tree; return the units to enable. Call after the base sshd file was written."""
    bob = loaded.spec.bob
    t.write_bytes(SSHD_CONF, sshd_config(bob), 0o644, what="bob: sshd configuration")
    for name, text in units(bob).items():
        t.write_bytes(f"{UNIT_DIR}/{name}", text, 0o644, what=f"bob: {name}")
    for path, data in bob_firewall.image_files(bob).items():
        t.write_bytes(path, data, 0o644, what=f"bob: {path}")
    t.mkdir(PERSISTENT, 0o755, what="bob: the mount point of /persistent")
    t.mkdir(WORKLOAD_DIR, 0o755, what="bob.workload")
    t.copy_file(WORKLOAD, loaded.resolve_source(bob.workload), 0o444, what="bob.workload")
    searcher_account(t)
    no_accept_env(t)
    return list(UNITS)


def no_accept_env(t: Tree) -> None:
    """Debian's sshd_config accepts LANG and LC_* from the client (AcceptEnv adds up across files, so bob's file cannot
    take it back): dropped, so the searcher's shell gets no variable from the client."""
    if t.resolve(DEBIAN_SSHD_CONF) is None:
        return
    lines = t.read_bytes(DEBIAN_SSHD_CONF).decode().splitlines(keepends=True)
    kept = [line for line in lines if not line.strip().lower().startswith("acceptenv")]
    if kept != lines:
        t.rewrite(DEBIAN_SSHD_CONF, "".join(kept).encode(), what="bob: no AcceptEnv in sshd_config")


def searcher_account(t: Tree) -> None:
    """searcher's subordinate ids, and a password field of "*" (no password can match, but not "!"-locked: the data
    plane sshd runs with UsePAM no, and then refuses a locked account even with a valid key)."""
    t.rewrite("/etc/subuid", SUBIDS, what="bob: /etc/subuid")
    t.rewrite("/etc/subgid", SUBIDS, what="bob: /etc/subgid")
    lines = t.read_bytes("/etc/shadow").decode().splitlines()
    fields = [line.split(":") for line in lines]
    if not any(f[0] == USER for f in fields):
        raise BuildError(f"bob: no {USER} account in /etc/shadow", hint="modules/bob.toml makes it ([users.searcher])")
    out = [":".join([f[0], "*", *f[2:]]) if f[0] == USER and len(f) > 2 else ":".join(f) for f in fields]
    t.rewrite("/etc/shadow", ("\n".join(out) + "\n").encode(), what="bob: searcher's password field")


def manifest_record(bob: Bob) -> dict[str, object]:
    """The manifest's "access" entry of a bob image (other images have none: root SSH on port 22, the default), read by
    the host: `exec`, `ssh` and the SDK refuse the sandbox, and readiness probes the control port."""
    return {"root_ssh": False, "ssh_port": bob.control_ssh_port,
            "why": "bob image: sealbox's root management path is off (only the searcher's command shell, docs/modules.md)"}
