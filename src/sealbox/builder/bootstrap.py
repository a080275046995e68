"""Bootstrap the image tree with mmdebstrap (the real tool), and fetch the non-installed .debs
(kernel, EFI stub, loader busybox) from the same archive state with apt-get download.

Inputs are pinned by construction: with a lock, an apt preferences file forces every locked version
(setup hook), cached .debs are synced in (apt checks their hashes against the archive index), and
the result is compared against the lock afterwards (lock.check_against_lock).
"""

from __future__ import annotations

import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from sealbox.builder.cache import DebCache
from sealbox.builder.lock import Installed, Lock
from sealbox.builder.sources import Sources
from sealbox.errors import BuildError
from sealbox.spec.model import ImageSpec
from sealbox.util.digest import sha256_file
from sealbox.util.run import output, run, which

HOOKS = Path("/usr/share/mmdebstrap/hooks")
BOOTSTRAP_TIMEOUT = 3600.0  # a cold bootstrap over a slow mirror; anything longer is stuck
APT_TIMEOUT = 1200.0

# dpkg path filters for the strip groups that can be applied while unpacking (faster than deleting later)
DPKG_EXCLUDES = {
    "docs": ["/usr/share/doc/*", "/usr/share/info/*", "/usr/share/lintian/*", "/usr/share/bug/*"],
    "man": ["/usr/share/man/*"],
    "locales": ["/usr/share/locale/*", "/usr/share/i18n/*"],
}
DPKG_INCLUDES = {"docs": ["/usr/share/doc/*/copyright"]}


@dataclass
class BootstrapResult:
    installed: dict[str, Installed]
    extras: dict[str, Installed]
    extra_files: dict[str, Path]  # package name -> downloaded .deb
    kernel_package: str  # the real linux-image-* package the kernel.package resolved to


def _deb_fields(path: Path) -> tuple[str, str, str]:
    out = output(["dpkg-deb", "--show", "--showformat=${Package}\\t${Version}\\t${Architecture}", path])
    name, version, arch = out.split("\t")
    return name, version, arch


def mmdebstrap_argv(spec: ImageSpec, sources: Sources, tree: Path, debs_in: Path, debs_out: Path, prefs: Path | None) -> list[str]:
    argv = [
        which("mmdebstrap"),
        "--mode=root",
        "--variant=essential",
        "--format=directory",
        f"--architectures={spec.distribution.architecture}",
        # mmdebstrap refuses an empty --include= (a container image may install nothing beyond the essential set)
        *([f"--include={','.join(sorted(set(spec.packages.include)))}"] if spec.packages.include else []),
        f"--hook-dir={HOOKS / 'merged-usr'}",
        "--skip=download/empty",
        "--skip=essential/unlink",
        "--skip=cleanup/apt/lists",  # apt-get download of the extras needs them; the strip step removes them
        "--dpkgopt=force-unsafe-io",
        "--aptopt=Acquire::Retries \"3\"",
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/ \"$1\"/etc/apt/preferences.d/",
        f"--setup-hook=sync-in {debs_in} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs_out}",
    ]
    # eatmydata skips dpkg's fsyncs: the tree is thrown away if the build fails anyway
    if (HOOKS / "eatmydata").is_dir() and shutil.which("dpkg-architecture"):
        argv.append(f"--hook-dir={HOOKS / 'eatmydata'}")
    if prefs is not None:
        argv.append(f"--setup-hook=copy-in {prefs} /etc/apt/preferences.d/")
    for group, globs in DPKG_EXCLUDES.items():
        if getattr(spec.strip, group):
            argv += [f"--dpkgopt=path-exclude={g}" for g in globs]
            argv += [f"--dpkgopt=path-include={g}" for g in DPKG_INCLUDES.get(group, [])]
    argv += [spec.distribution.suite, str(tree), *sources.lines()]
    return argv


def _apt_env(tree: Path, work: Path) -> dict[str, str]:
    """An apt configuration rooted at the bootstrapped tree (its sources, lists and pins); nothing from the caller."""
    conf = work / "apt.conf"
    conf.write_text(
        f'Dir "{tree}/";\nDir::State::status "{tree}/var/lib/dpkg/status";\n'
        'APT::Architecture "amd64";\nAPT::Architectures "amd64";\nDebug::NoLocking "true";\n'
        'APT::Sandbox::User "root";\nAcquire::Retries "3";\n'
        # no binary caches in the image tree: 74 MB the strip step would delete, built for one download
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    )
    return {"APT_CONFIG": str(conf), "HOME": str(work), "TMPDIR": str(work)}


def _control_field(stanza: str, field: str) -> str:
    """One field of a deb822 stanza (continuation lines joined); field names are never translated."""
    value: list[str] = []
    inside = False
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and inside:
            value.append(line.strip())
            continue
        key, sep, rest = line.partition(":")
        inside = bool(sep) and key.strip().lower() == field.lower()
        if inside:
            value.append(rest.strip())
    return " ".join(value)


def resolve_kernel_package(name: str, tree: Path, work: Path) -> str:
    """A metapackage such as linux-image-cloud-amd64 resolves to the linux-image-<abi>-<flavour> it depends on.

    Read from the candidate's control record (`apt-cache show`), never from `apt-cache depends`, whose
    labels are translated ("Dépend:" under LANGUAGE=fr).
    """
    show = run(["apt-cache", "show", "--no-all-versions", name], env=_apt_env(tree, work), check=False, timeout=APT_TIMEOUT)
    stanza = show.stdout.decode(errors="replace")
    if show.returncode != 0 or not stanza.strip():
        raise BuildError(f"kernel.package {name!r} is not available from the configured archive", hint="check kernel.package and the suite")
    for alternatives in _control_field(stanza, "Depends").split(","):
        first = alternatives.split("|")[0].split("(")[0].strip()
        if first.startswith("linux-image-"):
            return first
    return name


def download_extras(names: list[str], tree: Path, work: Path) -> dict[str, Path]:
    env = _apt_env(tree, work)
    dest = work / "extras"
    dest.mkdir(exist_ok=True)
    run(["apt-get", "download", *names], env=env, cwd=dest, timeout=APT_TIMEOUT, what="apt-get download " + " ".join(names))
    found = {}
    for deb in dest.glob("*.deb"):
        found[_deb_fields(deb)[0]] = deb
    missing = [n for n in names if n not in found]
    if missing:
        raise BuildError(f"apt-get download did not produce {', '.join(missing)}")
    return found


def bootstrap(spec: ImageSpec, sources: Sources, tree: Path, work: Path, cache: DebCache, lock: Lock | None,
              extras_wanted: list[str], epoch: int, log_path: Path) -> BootstrapResult:
    debs_in, debs_out = work / "debs-in", work / "debs-out"
    debs_out.mkdir(parents=True, exist_ok=True)
    cache.populate(debs_in)
    prefs = None
    if lock is not None:
        prefs = work / "sealbox-lock.pref"
        prefs.write_text(lock.pins() + "".join(
            f"Package: {n}\nPin: version {p.version}\nPin-Priority: 1001\n\n" for n, p in sorted(lock.extras.items())))
    argv = mmdebstrap_argv(spec, sources, tree, debs_in, debs_out, prefs)
    # own mount and PID namespaces: the /dev, /proc and /sys mounts mmdebstrap makes in the tree, and every process
    # it starts, vanish with it, even when sealbox is SIGKILLed (run() gives unshare a parent-death signal)
    ns = [which("unshare"), "--mount", "--propagation", "private", "--pid", "--kill-child", "--mount-proc"]
    env = {"SOURCE_DATE_EPOCH": str(epoch), "HOME": "/root", "TMPDIR": str(work)}
    run([*ns, *argv], env=env, log_file=log_path, timeout=BOOTSTRAP_TIMEOUT, what="mmdebstrap")
    fresh = cache.ingest(debs_out)

    # what got installed, with the sha256 of the .deb it came from
    status = output(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                     "-f=${Package}\\t${Version}\\t${Architecture}\\t${db:Status-Abbrev}\\n"])
    installed: dict[str, Installed] = {}
    for line in status.splitlines():
        name, version, arch, st = line.split("\t")
        if not st.startswith("ii"):
            continue
        fname = f"{name}_{urllib.parse.quote(version, safe='+~.-')}_{arch}.deb".replace("%3A", "%3a")
        if fname not in fresh:
            raise BuildError(f"no downloaded .deb found for installed package {name} {version} ({fname})")
        installed[name] = Installed(name, version, arch, fresh[fname], fname)

    # kernel, EFI stub, loader busybox: downloaded from the same archive state, never installed
    names = []
    kernel_real = ""
    for want in extras_wanted:
        if want.startswith("linux-image-"):
            kernel_real = resolve_kernel_package(want, tree, work)
            names += [want] if kernel_real == want else [want, kernel_real]
        else:
            names.append(want)
    files = download_extras(sorted(set(names)), tree, work) if names else {}  # a container image downloads nothing
    extras = {}
    for path in files.values():
        n, v, a = _deb_fields(path)
        extras[n] = Installed(n, v, a, sha256_file(path), path.name)
    cache.ingest(work / "extras")
    return BootstrapResult(installed, extras, files, kernel_real)
