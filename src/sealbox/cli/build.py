"""`sealbox build`, `sealbox summary`, `sealbox settings`, `sealbox verify-reproducible`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sealbox.cli.common import emit_json, load_spec_warned, split_profiles

if TYPE_CHECKING:
    from sealbox.builder.pipeline import Progress

# no dir_okay=False: the spec loader reports a directory as one "sealbox: error:" line like every spec error
SPEC_ARG = click.argument("spec", required=False, type=click.Path(path_type=Path))
PROFILE_OPT = click.option("--profile", "-p", "profiles", multiple=True, help="Profiles to apply, in order (a,b or repeated).")


def _progress(json_mode: bool) -> Progress | None:
    if json_mode:
        return None

    def show(step: str, state: str, seconds: float | None) -> None:
        if state == "start":
            click.echo(f"  {step:<12} …", err=True)
        elif state == "done":
            click.echo(f"  {step:<12} done in {seconds:.1f}s", err=True)
        elif state == "skip":
            click.echo(f"  {step:<12} skipped", err=True)
        elif state == "fail":
            click.echo(f"  {step:<12} FAILED after {seconds:.1f}s", err=True)

    return show


@click.command()
@SPEC_ARG
@PROFILE_OPT
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), help="Output directory [build/<name>].")
@click.option("--lock", "lock_path", type=click.Path(dir_okay=False, path_type=Path), help="Lock file [beside the spec].")
@click.option("--update-lock", is_flag=True, help="Resolve packages afresh and rewrite the lock.")
@click.option("--no-cache", is_flag=True, help="Ignore every cache (downloaded .debs, build-cache layers, previous outputs).")
@click.option("--layer-cache", type=click.Path(file_okay=False, path_type=Path),
              help="Build cache of layers, kernels and initrd segments [$SEALBOX_CACHE_DIR/layers].")
@click.option("--reuse", default="all", show_default=True, metavar="KINDS",
              help="Build-cache kinds this build may reuse: all, none, or a list of bootstrap,tree,kernel,modules,loader,segment.")
@click.option("--print-spec", is_flag=True, help="Print the fully merged spec and exit.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the temporary work tree goes [/var/tmp].")
@click.option("--keep-work", is_flag=True, help="Keep the work tree (for debugging).")
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable summary on stdout.")
def build(spec: Path | None, profiles: tuple[str, ...], output: Path | None, lock_path: Path | None, update_lock: bool,
          no_cache: bool, layer_cache: Path | None, reuse: str, print_spec: bool, work_dir: Path | None, keep_work: bool,
          json_mode: bool) -> None:
    """Build an image from SPEC (default: the built-in default image)."""
    from sealbox.builder.builder import BuildOptions, build_image
    from sealbox.builder.interrupt import Interrupted

    kinds = _reuse_kinds(reuse)
    loaded = load_spec_warned(spec, split_profiles(profiles))
    if print_spec:
        emit_json(loaded.canonical())
        return
    if not json_mode:
        click.echo(f"building {loaded.spec.name} ({', '.join(loaded.fragments)})", err=True)
    opts = BuildOptions(output=output, lock_path=lock_path, update_lock=update_lock, no_cache=no_cache, work_base=work_dir,
                        keep_work=keep_work, progress=_progress(json_mode), notice=lambda msg: click.echo(f"  {msg}", err=True),
                        layer_cache=layer_cache.absolute() if layer_cache else None, reuse=kinds)
    try:
        result = build_image(loaded, opts)
    except Interrupted as e:  # everything is cleaned up by now; the shell's convention for the exit status
        click.echo(f"sealbox: build {e}; its work files were removed", err=True)
        raise click.exceptions.Exit(e.exit_code) from None
    if json_mode:
        emit_json(result.summary())
        return
    state = "up to date" if result.up_to_date else "built"
    click.echo(f"{loaded.spec.name}: {state} in {result.output}")
    for name, art in sorted(result.manifest["artifacts"].items()):
        click.echo(f"  {name:<20} {art['size'] / 1e6:8.2f} MB  sha256:{art['sha256'][:16]}…")
    if result.lock_written:
        click.echo(f"  lock written: {result.lock_path}")


def _reuse_kinds(value: str) -> frozenset[str]:
    from sealbox.builder.layers import KINDS
    from sealbox.errors import UsageError

    if value == "all":
        return frozenset(KINDS)
    if value == "none":
        return frozenset()
    kinds = {k.strip() for k in value.split(",") if k.strip()}
    unknown = sorted(kinds - set(KINDS))
    if unknown or not kinds:
        raise UsageError(f"--reuse {value!r}: unknown kind {', '.join(unknown) or '(empty)'}",
                         hint=f"use all, none, or a comma-separated list of {', '.join(KINDS)}")
    return frozenset(kinds)


@click.command()
@SPEC_ARG
@PROFILE_OPT
def summary(spec: Path | None, profiles: tuple[str, ...]) -> None:
    """Print the fully merged spec (includes and profiles applied) as JSON."""
    loaded = load_spec_warned(spec, split_profiles(profiles))
    emit_json({"fragments": loaded.fragments, "profiles": loaded.profiles, "spec_digest": loaded.digest(),
               "spec": loaded.canonical()})


@click.command()
@click.option("--markdown", is_flag=True, help="Print as a Markdown table (docs/spec.md).")
def settings(markdown: bool) -> None:
    """List every spec setting: key, type, default, merge rule, description."""
    from sealbox.spec.docs import settings_markdown, settings_rows

    if markdown:
        click.echo(settings_markdown(), nl=False)
    else:
        for row in settings_rows():
            click.echo(f"{row['key']:<34} {row['merge']:<8} {row['type']:<22} {row['doc']}")


@click.command("verify-reproducible")
@SPEC_ARG
@PROFILE_OPT
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Where both builds go [/var/tmp].")
@click.option("--keep", is_flag=True, help="Keep both builds' outputs for inspection.")
@click.option("--json", "json_mode", is_flag=True)
def verify_reproducible(spec: Path | None, profiles: tuple[str, ...], work_dir: Path | None, keep: bool, json_mode: bool) -> int:
    """Build SPEC twice under varied conditions and compare every artifact bit for bit."""
    from sealbox.builder.reproducible import verify

    loaded = load_spec_warned(spec, split_profiles(profiles))
    report = verify(loaded, spec, split_profiles(profiles), work_dir, keep, progress=None if json_mode else
                    (lambda msg: click.echo(msg, err=True)))
    if json_mode:
        emit_json(report)
    else:
        for name, res in sorted(report["artifacts"].items()):
            click.echo(f"  {name:<20} {'identical' if res['identical'] else 'DIFFERS'}")
            for d in res.get("differences", [])[:20]:
                click.echo(f"      {d}")
        layered = report["layered"]
        differ = {n: r for n, r in layered["artifacts"].items() if not r["identical"]}
        click.echo(f"  layered rebuild (reused {', '.join(layered['reused'])}; configured the restored bootstrap tree again): "
                   + ("every artifact identical to the first build" if not differ else f"{len(differ)} artifacts DIFFER"))
        for name, res in sorted(differ.items()):
            click.echo(f"  {name:<20} DIFFERS (layered)")
            for d in res.get("differences", [])[:20]:
                click.echo(f"      {d}")
        click.echo("reproducible" if report["reproducible"] else "NOT reproducible")
    return 0 if report["reproducible"] else 1
