"""The image spec model: every setting declared once (type, default, merge rule, doc line)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

from pydantic import field_validator, model_validator

from sealbox.spec.bob import Bob
from sealbox.spec.fields import Section, setting

PKG_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
UNIT_RE = re.compile(r"^[A-Za-z0-9@._:\\-]+\.(service|socket|timer|target|mount|path|automount|slice)$")
KMOD_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SUITE_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,31}$")
CMDLINE_RE = re.compile(r"^[\x21-\x7e]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# a user as a container runtime takes it: name or uid, optionally ":group" (name or gid)
OCI_USER_RE = re.compile(r"^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})(:([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}))?$")
OCI_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # a tag as docker and podman accept it
OCI_REPO_RE = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$")  # one path component of an image reference
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONSOLE_RE = re.compile(r"^console=([A-Za-z]+[0-9]+)(,.*)?$")  # a tty port: ttyS0, hvc0, tty1


def _check_all(values: list[str], rx: re.Pattern[str], what: str, allowed: str) -> list[str]:
    for v in values:
        if not rx.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid {what} ({allowed})")
    return values


def _is_url(v: str) -> bool:
    """http(s)://host/... or file:///..., printable ASCII without quotes: the URL ends up in apt source lines."""
    if not re.fullmatch(r"[\x21-\x7e]+", v) or "'" in v or '"' in v:
        return False
    try:
        parts = urlsplit(v)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    if not v.startswith(f"{parts.scheme}://") or parts.scheme not in ("http", "https", "file"):
        return False
    return parts.scheme == "file" or bool(parts.hostname)


def _abs_posix(path: str, what: str) -> str:
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts or str(p) != path.rstrip("/") or "\x00" in path:
        raise ValueError(f"{what} {path!r} must be a normalised absolute path without '..'")
    return str(p)


class Distribution(Section):
    suite: str = setting("bookworm", "Debian suite to bootstrap.")
    architecture: Literal["amd64"] = setting("amd64", "Target architecture (amd64 only for now).")
    mirror: str = setting("", "Debian mirror URL; empty = the Debian mirror in the host's apt sources.")
    security_mirror: str = setting("", "Mirror for <suite>-security; empty = derived from the host's apt sources.")
    snapshot: str = setting("", "Frozen snapshot URL (e.g. a dated archive snapshot); overrides mirror and security_mirror.")
    components: list[str] = setting(["main"], "Archive components.")
    security: bool = setting(True, "Also use <suite>-security (and <suite>-updates).")

    @field_validator("suite")
    @classmethod
    def _suite(cls, v: str) -> str:
        if not SUITE_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid suite name (lowercase letters, digits, '.', '-')")
        return v

    @field_validator("mirror", "security_mirror", "snapshot")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not _is_url(v):
            raise ValueError(f"{v!r} is not an http(s):// or file:// URL")
        return v.rstrip("/")

    @field_validator("components")
    @classmethod
    def _components(cls, v: list[str]) -> list[str]:
        return _check_all(v, re.compile(r"^[a-z0-9-]+$"), "component", "lowercase letters, digits, '-'")


class Packages(Section):
    include: list[str] = setting([], "Debian packages to install (name or name=version).")

    @field_validator("include")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return _check_all(v, PKG_RE, "Debian package name", "lowercase letters, digits, '+', '-', '.'; optional =version")


class User(Section):
    uid: int | None = setting(None, "Fixed uid (default: the next after the highest from 1000, in name order, once "
                              "every fixed uid is taken).", ge=1000, le=59999)
    groups: list[str] = setting([], "Supplementary groups (must exist in the image).")
    shell: str = setting("/bin/bash", "Login shell.")
    authorized_keys: list[str] = setting(
        [], "SSH public keys baked into the image; refused unless hardening.allow_baked_keys (devtools-like profiles)."
    )
    instance_password: bool = setting(
        False, "A random password made per sandbox by `sealbox run` and delivered as a secret in the instance data "
        "(for desktop logins, see the gui module; SSH stays key-only). The image itself never holds a password."
    )

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return _check_all(v, USER_RE, "group name", "lowercase letters, digits, '_', '-'")

    @field_validator("shell")
    @classmethod
    def _shell(cls, v: str) -> str:
        return _abs_posix(v, "shell")

    @field_validator("authorized_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        rx = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/=]+( [^\x00-\x1f\x7f]*)?$")
        return _check_all(v, rx, "OpenSSH public key", "one 'type base64 [comment]' line")


class FileEntry(Section):
    source: str = setting(..., "File or directory to copy, relative to the spec file that declares it.")
    dest: str = setting(..., "Absolute destination path inside the image.")
    mode: int | None = setting(None, "Permission bits for files (e.g. 0o644); directories keep 0755.", ge=0, le=0o7777)
    owner: str = setting("root", "Owner user name inside the image.")
    group: str = setting("root", "Owner group name inside the image.")

    @field_validator("dest")
    @classmethod
    def _dest(cls, v: str) -> str:
        return _abs_posix(v, "dest")

    @field_validator("owner", "group")
    @classmethod
    def _owner(cls, v: str) -> str:
        return _check_all([v], USER_RE, "user/group name", "lowercase letters, digits, '_', '-'")[0]


class Services(Section):
    enable: list[str] = setting([], "systemd units to enable.")
    mask: list[str] = setting([], "systemd units to mask (link to /dev/null).")

    @field_validator("enable", "mask")
    @classmethod
    def _units(cls, v: list[str]) -> list[str]:
        return _check_all(v, UNIT_RE, "systemd unit name", "name.service, name.socket, name.target, ...")


class Hardening(Section):
    lock_root: bool = setting(True, "Lock root's password (SSH keys supplied at run time still work).")
    ssh: bool = setting(True, "Run sshd: key-only, host keys generated at first boot, never baked.")
    firewall: bool = setting(True, "nftables: default-deny incoming, allowing only firewall_allow_tcp/udp.")
    firewall_allow_tcp: list[int] = setting([22], "Incoming TCP ports the image allows.")
    firewall_allow_udp: list[int] = setting([], "Incoming UDP ports the image allows.")
    console_getty: bool = setting(False, "Login prompt on the serial console (debug profiles only).")
    allow_baked_keys: bool = setting(False, "Allow users.*.authorized_keys in the image (devtools-like profiles).")

    @field_validator("firewall_allow_tcp", "firewall_allow_udp")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 1 <= p <= 65535:
                raise ValueError(f"{p} is not a port number (1-65535)")
        return v


class Strip(Section):
    """Named groups of paths removed from the image; each group is a switch so profiles can turn one off."""

    docs: bool = setting(True, "/usr/share/doc (copyright files kept), info, lintian, bug reports.")
    man: bool = setting(True, "Manual pages.")
    locales: bool = setting(True, "Translations and locales except C.UTF-8; gconv modules.")
    perl: bool = setting(True, "perl-base and debconf's perl (only needed by package scripts).")
    package_manager: bool = setting(True, "dpkg/apt tools and databases' helper files (the image is immutable).")
    zoneinfo: bool = setting(True, "Time zone database (the guest runs in UTC).")
    extra_tools: bool = setting(True, "Tools a sandbox does not use: user management, fdisk, tc, ssh clients, unused generators...")
    unused_libraries: bool = setting(True, "Shared libraries no program, PAM/NSS module or plugin in the image links (after the other groups).")
    paths: list[str] = setting([], "Further glob patterns (absolute, inside the image) to remove; `*` stays within a path "
                                   "component, `**` spans components, a matched directory goes whole.")
    keep: list[str] = setting([], "Glob patterns (same rules) never removed, even if a group matches them; a matched directory is kept whole.")

    @field_validator("paths", "keep")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/") or ".." in p.split("/"):
                raise ValueError(f"{p!r} must be an absolute glob inside the image without '..'")
        return v


class Kernel(Section):
    package: str = setting("linux-image-cloud-amd64", "Debian kernel package (a metapackage is resolved to its image).")
    cmdline: list[str] = setting([], "Kernel command line arguments baked into the image (UKI .cmdline). A later console= for a "
                                     "port replaces an earlier one for the same port (the kernel itself would keep the first's options).")
    modules: list[str] = setting([], "Kernel modules to keep in the image (their dependencies are added).")
    load: list[str] = setting([], "Modules loaded at boot (there is no udev to autoload them).")

    @field_validator("package")
    @classmethod
    def _pkg(cls, v: str) -> str:
        return _check_all([v], PKG_RE, "Debian package name", "e.g. linux-image-cloud-amd64")[0]

    @field_validator("cmdline")
    @classmethod
    def _cmdline(cls, v: list[str]) -> list[str]:
        _check_all(v, CMDLINE_RE, "kernel argument", "printable ASCII without spaces")
        # console=ttyS0,115200n8 after base's console=ttyS0 must win: Linux keeps the options of a port's first
        # console= and ignores the later one's (measured: stty speed stays 9600)
        port = {i: m.group(1) for i, a in enumerate(v) if (m := CONSOLE_RE.match(a))}
        last = {p: i for i, p in port.items()}
        return [a for i, a in enumerate(v) if i not in port or last[port[i]] == i]

    @field_validator("modules", "load")
    @classmethod
    def _mods(cls, v: list[str]) -> list[str]:
        return _check_all(v, KMOD_RE, "kernel module name", "letters, digits, '_', '-'")


DISK_FORMATS = ("disk", "qcow2", "vhd", "gcp")  # bootable GPT disk images carrying the UKI (builder/disk.py)
OCI_FORMAT = "oci"  # a container image (builder/oci.py): built from its own spec, with no kernel
VERITY_DMSETUP = "/usr/sbin/dmsetup"  # what the verity root's initramfs runs (builder/verity.py)


class Output(Section):
    formats: list[Literal["initrd", "ext4", "uki", "disk", "qcow2", "vhd", "gcp", "oci"]] = setting(
        ["initrd", "ext4"],
        "Artifacts to write besides vmlinuz/vmlinux/manifest: initrd, ext4, uki, and bootable GPT disks carrying the UKI: "
        "disk (disk.raw), qcow2 (disk.qcow2), vhd (disk.vhd, fixed, for Azure), gcp (disk.gcp.tar.gz, for GCP); or, alone, "
        "oci (<name>.oci.tar: a container image for podman/docker load, configured by [oci]; no kernel, no vmlinuz).",
        merge="override",
    )
    compression_level: int = setting(19, "zstd level of initrd.cpio.zst (higher = smaller, slower).", ge=1, le=19)
    ext4_extra_mib: int = setting(16, "Free space added to rootfs.ext4 beyond its content (MiB).", ge=0, le=65536)
    disk_root: Literal["initrd", "verity"] = setting(
        "initrd", "What disk images boot: initrd (the UKI's initrd is the system) or verity (rootfs.ext4 as a read-only "
        "root partition verified by dm-verity, its root hash on the disk UKI's measured command line; needs ext4 and dmsetup).")

    @model_validator(mode="after")
    def _disks_need_uki(self) -> Output:
        disks = [f for f in self.formats if f in DISK_FORMATS]
        if disks and "uki" not in self.formats:
            raise ValueError(f"formats {disks} boot the UKI from the disk's EFI system partition: add \"uki\" to output.formats")
        if self.disk_root == "verity" and not (disks and "ext4" in self.formats):
            raise ValueError('disk_root = "verity" puts rootfs.ext4 on a disk image: output.formats needs "ext4" and a disk format')
        return self


class Oci(Section):
    """The container image's runtime settings (output.formats = ["oci"]); they are in the image: never a secret."""

    entrypoint: list[str] = setting([], "Entrypoint of the container (argv; empty: the runtime runs cmd alone).", merge="override")
    cmd: list[str] = setting([], "Command of the container, or the arguments to entrypoint (argv).", merge="override")
    env: dict[str, str] = setting({}, f"Environment of the container, merged name by name; PATH is {DEFAULT_PATH} unless "
                                  "set here. Baked into the image: never a secret.")
    user: str = setting("nobody", "User the container runs as: a name or uid, optionally :group; names must exist in the "
                        "image (default: an unprivileged account every Debian image has).")
    workdir: str = setting("/", "Working directory of the container (must be a directory in the image).")
    tag: str = setting("latest", "Tag of the image: podman/docker load name it localhost/<name>:<tag>.")
    compression_level: int = setting(6, "gzip level of the layer (1 fastest ... 9 smallest).", ge=1, le=9)

    @field_validator("entrypoint", "cmd")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        for arg in v:
            if "\x00" in arg:
                raise ValueError(f"{arg!r} contains a NUL byte")
        if v and not v[0]:
            raise ValueError("the program (the first element) is empty")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not ENV_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits, '_'; not a digit first)")
            if "\x00" in value:
                raise ValueError(f"the value of {name} contains a NUL byte")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        return _check_all([v], OCI_USER_RE, "container user", "name or uid, optionally ':group' (name or gid)")[0]

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str) -> str:
        return _abs_posix(v, "workdir") if v != "/" else v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        return _check_all([v], OCI_TAG_RE, "image tag", "letters, digits, '_', '.', '-'; at most 128, not '.' or '-' first")[0]


# one identity of the persistent disk: a serial the host (or cloud) sets, or an Azure data disk LUN (0-63)
PERSIST_ID_RE = re.compile(r"^(serial=[A-Za-z0-9][A-Za-z0-9._-]{0,19}|azure-lun=([0-9]|[1-5][0-9]|6[0-3]))$")
# what the bob guest scripts run (modules/bob): packages a spec cannot drop while bob.enable
BOB_TOOLS = {"python3": "the searcher's command shell is a Python script", "conntrack": "every mode switch flushes "
             "connection tracking with conntrack", "nftables": "every mode loads its rule set with nft"}
PERSIST_TOOLS = ("/usr/sbin/mke2fs", "/usr/sbin/e2fsck")  # what builder's strip.extra_tools would remove


class Persistent(Section):
    enable: bool = setting(False, "At boot, mount the one data disk named by `disk` at /persistent (nosuid,nodev): an ext4 filesystem "
                                  "is made on a blank disk, an existing one is checked; anything else is left alone (docs/deploy.md).")
    disk: list[str] = setting([], "The disk's identities, any of which names it: serial=NAME (`sealbox run --disk FILE:rw,serial=NAME`, "
                                  "a virtio-blk, SCSI or NVMe serial, GCP's device name) or azure-lun=N (an Azure data disk's LUN).")

    @field_validator("disk")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        return _check_all(v, PERSIST_ID_RE, "disk identity", "serial=NAME (1-20 letters, digits, '.', '_', '-') or azure-lun=0..63")


class Cloud(Section):
    providers: list[Literal["azure", "gcp"]] = setting(
        [], "Clouds the guest provisions itself on when it boots without a sealbox instance disk: DHCP on eth0, host name and SSH "
            "keys from the cloud's metadata service, Azure's ready report to its wire server (docs/deploy.md).")


class ImageBody(Section):
    """Everything a fragment (module, spec file or profile) may set."""

    name: str = setting("image", "Image name: the output directory build/<name>/ and UKI file name.")
    epoch: int = setting(1735689600, "SOURCE_DATE_EPOCH: every timestamp in every artifact.", ge=0, le=2**32 - 1)
    distribution: Distribution = setting(Distribution(), "Where packages come from.")
    packages: Packages = setting(Packages(), "Package selection.")
    users: dict[str, User] = setting({}, "Non-root users by name.")
    files: list[FileEntry] = setting([], "Files and trees copied into the image.")
    services: Services = setting(Services(), "systemd units to enable or mask.")
    hardening: Hardening = setting(Hardening(), "Security switches.")
    strip: Strip = setting(Strip(), "What is removed from the image.")
    kernel: Kernel = setting(Kernel(), "Kernel package, command line and modules.")
    output: Output = setting(Output(), "Artifact formats.")
    oci: Oci = setting(Oci(), "Container image settings (used when output.formats is [\"oci\"]).")
    persistent: Persistent = setting(Persistent(), "A persistent data disk mounted at /persistent (module persistent).")
    cloud: Cloud = setting(Cloud(), "Self-provisioning on clouds (profiles azure, gcp).")
    bob: Bob = setting(Bob(), "Searcher sandbox (module bob): ports per plane, builder endpoints, dwell time, workload.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not IMAGE_NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a safe image name (letters, digits, '.', '_', '-'; at most 64)")
        return v

    @field_validator("users")
    @classmethod
    def _user_names(cls, v: dict[str, User]) -> dict[str, User]:
        for name in v:
            if not USER_RE.fullmatch(name) or name == "root":
                raise ValueError(f"{name!r} is not a valid non-root user name (lowercase letters, digits, '_', '-')")
        return v


class ImageSpec(ImageBody):
    """The fully merged spec (includes and profiles resolved)."""

    @model_validator(mode="after")
    def _unique_uids(self) -> ImageSpec:
        owner: dict[int, str] = {}
        for name, user in sorted(self.users.items()):
            if user.uid is not None:
                if user.uid in owner:
                    raise ValueError(f"users.{name}.uid: {user.uid} is already the uid of users.{owner[user.uid]} (uids must be unique)")
                owner[user.uid] = name
        return self

    @model_validator(mode="after")
    def _no_baked_keys_unless_allowed(self) -> ImageSpec:
        if not self.hardening.allow_baked_keys:
            for name, user in self.users.items():
                if user.authorized_keys:
                    raise ValueError(
                        f"users.{name}.authorized_keys: baking SSH keys into a measured image is refused; sandboxes "
                        "get per-instance keys at run time (set hardening.allow_baked_keys = true only in a "
                        "devtools-like profile)"
                    )
        return self


    @model_validator(mode="after")
    def _verity_needs_dmsetup(self) -> ImageSpec:
        if self.output.disk_root != "verity":
            return self
        if not any(p.split("=")[0] == "dmsetup" for p in self.packages.include):
            raise ValueError('output.disk_root = "verity": the initramfs maps the root with the image\'s dmsetup: add "dmsetup" to packages.include')
        if not any(fnmatch.fnmatchcase(VERITY_DMSETUP, k) for k in self.strip.keep):
            raise ValueError(f'output.disk_root = "verity": strip.extra_tools removes {VERITY_DMSETUP}: add "{VERITY_DMSETUP}" to strip.keep')
        return self

    @model_validator(mode="after")
    def _oci_is_a_container(self) -> ImageSpec:
        if OCI_FORMAT not in self.output.formats:
            return self
        others = [f for f in self.output.formats if f != OCI_FORMAT]
        if others:
            raise ValueError(f'output.formats: "oci" is a container image and cannot be built with the VM formats {others} '
                             "from one spec: build those from another spec (both may include a fragment they share)")
        vm = vm_only_settings(self)
        if vm:
            raise ValueError(f'output.formats = ["oci"]: {", ".join(vm)} configure a VM (its kernel, boot and units), which a '
                             'container image does not have: remove them (the VM module "base" sets them)')
        if not OCI_REPO_RE.fullmatch(self.name):
            raise ValueError(f"name {self.name!r} cannot name a container image (localhost/<name>): lowercase letters and "
                             "digits, separated by '.', '_', '__' or '-'")
        return self

    @model_validator(mode="after")
    def _guest_features_have_their_tools(self) -> ImageSpec:
        pkgs = {p.split("=")[0] for p in self.packages.include}
        if self.persistent.enable:
            if not self.persistent.disk:
                raise ValueError("persistent.enable: persistent.disk names no disk (e.g. \"serial=persistent\")")
            if "e2fsprogs" not in pkgs:
                raise ValueError('persistent.enable: the guest makes and checks ext4 with e2fsprogs: add "e2fsprogs" to packages.include')
            lost = [t for t in PERSIST_TOOLS if self.strip.extra_tools and not any(fnmatch.fnmatchcase(t, k) for k in self.strip.keep)]
            if lost:
                raise ValueError(f"persistent.enable: strip.extra_tools removes {lost[0]}: add {', '.join(map(repr, lost))} to strip.keep")
        if self.cloud.providers and "busybox" not in pkgs:
            raise ValueError('cloud.providers: the guest uses busybox\'s udhcpc and wget: add "busybox" to packages.include')
        return self

    @model_validator(mode="after")
    def _bob_is_complete(self) -> ImageSpec:
        problem = self.bob.missing()
        if problem:
            raise ValueError(problem)
        if self.bob.enable and self.persistent.enable:
            raise ValueError("bob.enable with persistent.enable: the module persistent would make the data disk plain ext4 at "
                             "boot, before bob's initialize encrypts it: remove \"persistent\" from include (bob makes its "
                             "own encrypted /persistent)")
        if self.bob.enable:
            pkgs = {p.split("=")[0] for p in self.packages.include}
            for pkg, why in BOB_TOOLS.items():
                if pkg not in pkgs:
                    raise ValueError(f'bob.enable: {why}: add "{pkg}" to packages.include (the module bob does)')
        return self


def needs_kernel(formats: Collection[str]) -> bool:
    """Whether a build with these output formats fetches a kernel: every build but a container image's."""
    return OCI_FORMAT not in formats


def vm_only_settings(spec: ImageBody) -> list[str]:
    """The settings a fragment set that only mean something in a VM image (their defaults do not count)."""
    h, k = spec.hardening, spec.kernel
    out = [f"hardening.{n}" for n in ("ssh", "firewall", "console_getty", "firewall_allow_tcp", "firewall_allow_udp")
           if n in h.model_fields_set and getattr(h, n)]
    out += [f"kernel.{n}" for n in ("package", "cmdline", "modules", "load")
            if n in k.model_fields_set and getattr(k, n) != Kernel.model_fields[n].get_default(call_default_factory=True)]
    out += [f"services.{n}" for n in ("enable", "mask") if getattr(spec.services, n)]
    out += ["persistent.enable"] if spec.persistent.enable else []
    out += ["cloud.providers"] if spec.cloud.providers else []
    out += ["bob.enable"] if spec.bob.enable else []
    return out




# Keys a fragment may have besides the body's settings.
FRAGMENT_KEYS = {"include", "profiles"}
