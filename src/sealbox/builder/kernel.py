"""The kernel: bzImage as shipped, an ELF vmlinux for Firecracker, and only the modules the VM needs.

Module dependencies come from each module's own .modinfo section ("depends=" and "softdep="), read
with a minimal ELF reader, so no kmod is needed on the host; depmod then runs inside the image tree.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from dataclasses import dataclass
from pathlib import Path

from sealbox.builder.intree import Tree
from sealbox.errors import BuildError
from sealbox.formats import elf
from sealbox.util.run import run

LZ4_LEGACY_MAGIC = 0x184C2102


@dataclass
class KernelFiles:
    version: str  # uname -r
    vmlinuz: Path
    config: Path | None
    modules_root: Path  # .../lib/modules/<version>


def extract_kernel_deb(deb: Path, dest: Path) -> KernelFiles:
    run(["dpkg-deb", "-x", deb, dest])
    return kernel_files_in(dest, deb.name)


def kernel_files_in(dest: Path, what: str) -> KernelFiles:
    """The kernel image, config and modules of a kernel package unpacked at `dest` (`what` names it in errors)."""
    images = sorted((dest / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise BuildError(f"kernel package {what} holds {len(images)} vmlinuz files, expected one")
    version = images[0].name.removeprefix("vmlinuz-")
    mods = next((p for p in (dest / "lib/modules" / version, dest / "usr/lib/modules" / version) if p.is_dir()), None)
    if mods is None:
        raise BuildError(f"kernel package {what} has no modules for {version}")
    config = dest / "boot" / f"config-{version}"
    return KernelFiles(version, images[0], config if config.is_file() else None, mods)


# --- vmlinux ------------------------------------------------------------------------------------

def _lz4_legacy(data: bytes) -> bytes:
    import lz4.block

    if struct.unpack_from("<I", data, 0)[0] != LZ4_LEGACY_MAGIC:
        raise BuildError("kernel payload is not LZ4 legacy data")
    out, pos = bytearray(), 4
    while pos + 4 < len(data):  # the build appends the 4-byte uncompressed size: stop before it
        size = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if size == LZ4_LEGACY_MAGIC:
            continue
        if size > len(data) - pos:
            break
        out += lz4.block.decompress(data[pos:pos + size], uncompressed_size=8 << 20)
        pos += size
    return bytes(out)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Decompress the protected-mode payload of a bzImage into the ELF vmlinux it was built from."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise BuildError("kernel image is not a bzImage (no HdrS setup header)")
    setup_sects = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start:start + payload_length]
    if len(payload) != payload_length or payload_length < 8:
        raise BuildError(f"kernel image is truncated: its payload needs {payload_length} bytes at offset {start}")
    decoders = [
        (b"\x02\x21\x4c\x18", _lz4_legacy),
        (b"\x1f\x8b", gzip.decompress),
        (b"\xfd7zXZ\x00", lambda d: lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d)),
        (b"\x28\xb5\x2f\xfd", _zstd),
    ]
    for magic, decode in decoders:
        if payload.startswith(magic):
            try:
                elf = decode(payload)
            except Exception as e:  # noqa: BLE001 - each library has its own "corrupt data" exception
                raise BuildError(f"kernel payload does not decompress: {type(e).__name__}: {e}") from None
            # every kernel payload format ends in the LE32 uncompressed size (gzip's ISIZE, size_append otherwise)
            want, = struct.unpack_from("<I", payload, len(payload) - 4)
            if len(elf) & 0xFFFFFFFF != want:
                raise BuildError(f"kernel payload decompressed to {len(elf)} bytes, its trailer says {want}: truncated or corrupt")
            if elf[:4] != b"\x7fELF":
                raise BuildError("decompressed kernel payload is not an ELF file")
            return elf
    raise BuildError(f"unsupported kernel compression (payload starts with {payload[:6].hex()})")


# --- modules ------------------------------------------------------------------------------------

def read_module(path: Path) -> bytes:
    """A module file's ELF bytes; .ko.xz/.ko.gz/.ko.zst (Debian's 6.12 kernels use .ko.xz) are decompressed."""
    data = path.read_bytes()
    try:
        if data.startswith(b"\xfd7zXZ\x00"):
            return lzma.decompress(data, format=lzma.FORMAT_XZ)
        if data.startswith(b"\x1f\x8b"):
            return gzip.decompress(data)
        if data.startswith(b"\x28\xb5\x2f\xfd"):
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except Exception as e:  # noqa: BLE001 - corrupt compressed data, whichever library reports it
        raise BuildError(f"kernel module {path.name} does not decompress: {type(e).__name__}: {e}") from None
    return data


def modinfo(path: Path) -> dict[str, list[str]]:
    """key -> values from the .modinfo section of an ELF64 little-endian kernel module (plain or compressed)."""
    data = read_module(path)
    if not elf.is_elf64_le(data):
        raise BuildError(f"{path.name} is not an ELF64 little-endian module")
    try:
        raw = elf.section(data, b".modinfo")
    except (struct.error, ValueError, IndexError, OverflowError) as e:
        raise BuildError(f"kernel module {path.name} is truncated or malformed ({e})") from None
    info: dict[str, list[str]] = {}
    for item in (raw or b"").split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_index(modules_root: Path) -> dict[str, Path]:
    return {_norm(p.name.split(".ko")[0]): p for p in sorted(modules_root.rglob("*.ko*"))}


def builtin_modules(modules_root: Path) -> set[str]:
    f = modules_root / "modules.builtin"
    return {_norm(Path(line).name.split(".ko")[0]) for line in f.read_text().split()} if f.exists() else set()


def module_closure(wanted: list[str], modules_root: Path) -> list[Path]:
    """The module files for `wanted` plus everything they depend on (hard and soft dependencies)."""
    index, builtin = module_index(modules_root), builtin_modules(modules_root)
    todo, seen, out = [_norm(w) for w in wanted], set(), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in index:
            if name in builtin:
                continue  # compiled into this kernel: nothing to copy
            raise BuildError(f"kernel.modules: {name!r} is neither a module nor built into kernel {modules_root.name}")
        out.append(index[name])
        info = modinfo(index[name])
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                todo.append(_norm(dep))
        for soft in info.get("softdep", []):  # "pre: a b post: c"
            todo += [_norm(w) for w in soft.split() if not w.endswith(":") and _norm(w) in index]
    return sorted(out)


def install_modules(kernel: KernelFiles, wanted: list[str], tree: Path) -> list[str]:
    """Copy the closure of `wanted` into the tree and run the tree's depmod. Returns the module names."""
    dest_root = f"/usr/lib/modules/{kernel.version}"
    files = module_closure(wanted, kernel.modules_root)
    with Tree(tree) as t:  # /usr/lib/modules may be a link in the image: resolved inside it, never on the host
        for src in files:
            t.copy_file(f"{dest_root}/{src.relative_to(kernel.modules_root).as_posix()}", src, 0o644)
        for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            if (kernel.modules_root / meta).exists():
                t.copy_file(f"{dest_root}/{meta}", kernel.modules_root / meta, 0o644)
    if files:
        run(["chroot", tree, "/usr/sbin/depmod", "-a", kernel.version], what="depmod in the image")
    return sorted(_norm(p.name.split(".ko")[0]) for p in files)


def _softdeps(info: dict[str, list[str]], which: str) -> list[str]:
    """Module names after "pre:" or "post:" in softdep= lines ("pre: a b post: c")."""
    out, current = [], None
    for soft in info.get("softdep", []):
        for word in soft.split():
            if word.endswith(":"):
                current = word[:-1]
            elif current == which:
                out.append(_norm(word))
    return out


def load_order(wanted: list[str], modules_root: Path) -> list[Path]:
    """Module files for `wanted` in an order insmod accepts: every dependency before its users, and soft
    dependencies where modprobe would put them ("pre:" before, "post:" after) when they are modules."""
    index, builtin = module_index(modules_root), builtin_modules(modules_root)
    order: list[Path] = []
    state: dict[str, str] = {}

    def visit(name: str, soft: bool = False) -> None:
        if state.get(name) == "done" or name in builtin and name not in index:
            return
        if state.get(name) == "active":
            if soft:  # a soft dependency back into the chain just does not constrain the order
                return
            raise BuildError(f"kernel module dependency cycle at {name}")
        if name not in index:
            if soft:
                return
            raise BuildError(f"kernel module {name!r} not found in {modules_root.name}")
        state[name] = "active"
        info = modinfo(index[name])
        for pre in _softdeps(info, "pre"):
            visit(pre, soft=True)
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                visit(_norm(dep))
        state[name] = "done"
        order.append(index[name])
        for post in _softdeps(info, "post"):
            visit(post, soft=True)

    for w in wanted:
        visit(_norm(w))
    return order
