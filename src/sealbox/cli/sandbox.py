"""`sealbox run|ps|inspect|logs|stop|rm|gc`: thin wrappers over the SDK (sealbox.sdk: Sandbox on a LocalHost),
the same calls a Python program makes; imported inside each command so start-up stays small."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

if TYPE_CHECKING:
    from sealbox.sdk.host import Host, LocalHost
    from sealbox.sdk.sandbox import Sandbox

state_opt = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help="State directory (default: $SEALBOX_STATE_DIR or /var/lib/sealbox).")


def local_host(state_dir: Path | None) -> LocalHost:
    """This machine's sandboxes in the chosen state dir, its access checked first (one line if not root)."""
    from sealbox.sdk.host import LocalHost

    host = LocalHost(state_dir, command=click.get_current_context().command_path)
    host.layout  # noqa: B018 - the access check: without root nothing else can be answered
    return host


FLEET_META = "sealbox.fleet"  # click context meta: the address of `sealbox --fleet`, once cli/fleetopt.py checked it


def fleet_address() -> str | None:
    """The fleet the current command acts on, or None (this host); read here so that a local verb imports nothing more."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get(FLEET_META)


def target_host(state_dir: Path | None) -> Host:
    """The fleet of `sealbox --fleet ADDRESS` (cli/fleetopt.py), else this machine's sandboxes in the state dir."""
    fleet = fleet_address()
    if fleet is None:
        return local_host(state_dir)
    from sealbox.cli import fleetopt

    if state_dir is not None:
        fleetopt.refuse("--state-dir", "each host of the fleet keeps its own state")
    return fleetopt.fleet(fleet)


def sandbox_handle(name: str, state_dir: Path | None) -> Sandbox:
    """A handle without a look-up of its own: each verb reads the record once and says if there is none."""
    from sealbox.sdk.sandbox import Sandbox

    return Sandbox(name, target_host(state_dir))


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    from sealbox.sandbox.labels import parse_labels

    return parse_labels(items)


def _warn(msg: str) -> None:
    click.echo(f"sealbox: warning: {msg}", err=True)


def _dump(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@click.command()
@click.argument("image_dir", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Sandbox name (letters, digits, '-').")
@click.option("--cpus", type=int, default=None, help="vCPUs (1-32)  [default: 2, or the snapshot's].")
@click.option("--memory", "memory_mib", type=int, default=None,
              help="Guest RAM in MiB [default: 512, or the image's minimum if that is more].")
@click.option("--net", type=click.Choice(["isolated", "nat"]), default="isolated", show_default=True)
@click.option("--allow-egress", multiple=True, metavar="CIDR[:PORT]", help="nat only: allowed destinations (repeatable).")
@click.option("--dns", multiple=True, metavar="IP", help="nat only: the guest's resolver (repeatable); default: a forwarder on its link.")
@click.option("--disk", "disks", multiple=True, metavar="FILE[:ro|rw][:raw|qcow2][,serial=NAME]",
              help="Attach a disk (repeatable; default rw, raw: the format is declared, never probed; serial: the guest's "
                   "name for it, e.g. serial=persistent for the persistent module). A rw disk is held by one sandbox at a time.")
@click.option("--publish", "-p", "publish", multiple=True, metavar="[HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|udp]",
              help="Forward a host port to the guest (repeatable; host address default 127.0.0.1; no host port: any free one).")
@click.option("--net-rate", metavar="RATE[:BURST]", default=None, help="Network rate limit, each direction, e.g. 10MiB/s or 10MiB/s:20MiB.")
@click.option("--disk-rate", metavar="RATE[:BURST]", default=None, help="Bytes per second per attached disk, e.g. 50MB/s.")
@click.option("--disk-iops", metavar="OPS[:BURST]", default=None, help="Operations per second per attached disk, e.g. 500.")
@click.option("--rootfs", type=click.Choice(["initrd", "disk"]), default=None, help="[default: initrd, or the snapshot's]")
@click.option("--vmm", type=click.Choice(["auto", "qemu", "firecracker"]), default="auto", show_default=True)
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True)
@click.option("--firmware", type=click.Choice(["direct", "ovmf"]), default="direct", show_default=True)
@click.option("--boot", type=click.Choice(["kernel", "disk-image"]), default="kernel", show_default=True,
              help="disk-image: UEFI (OVMF) boots the image's GPT disk by itself, no -kernel (needs a disk output format).")
@click.option("--tdx", is_flag=True, help="Run as a TDX guest (QEMU, TDX host).")
@click.option("--from-snapshot", type=click.Path(path_type=Path), default=None,
              help="Restore a snapshot ('sealbox snapshot NAME'): the guest renews its keys, addresses and random state.")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Seconds until the guest must be ready.")
@click.option("--console-max", "console_max_mib", type=int, default=16, show_default=True,
              help="MiB of console log kept (a capped tmpfs); later output is dropped.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Keep this label with the sandbox (repeatable; ps shows and filters them).")
@click.option("--host-label", "host_labels", multiple=True, metavar="KEY=VALUE",
              help="With --fleet: place it only on a host with this label, e.g. zone=b or tdx=true (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print every host step and the VMM command/config; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@state_opt
def run(image_dir: Path, state_dir: Path | None, dry_run: bool, as_json: bool, host_labels: tuple[str, ...], **flags: Any) -> None:
    """Start a sandbox from IMAGE_DIR and return once its guest is ready."""
    from sealbox.sdk.sandbox import Sandbox

    host = _run_host(state_dir, host_labels, flags)  # first: without root nothing else can be answered
    renamed = {"network": flags.pop("net"), "timeout_s": flags.pop("timeout"), "labels": _labels(flags.pop("labels"))}
    kw = {**flags, **renamed, "from_snapshot": str(flags["from_snapshot"]) if flags["from_snapshot"] else None}
    kw = {k: v for k, v in kw.items() if not (k in ("cpus", "rootfs") and v is None)}  # not given: the default or the snapshot's
    if kw["from_snapshot"]:
        from sealbox.sdk.sandbox import restore_defaults

        kw = restore_defaults(kw["from_snapshot"], kw)
    kw = {"cpus": 2, "rootfs": "initrd", **kw}
    if dry_run:
        out = Sandbox.plan(image_dir, host=host, **kw)
        for w in out["warnings"]:
            _warn(w)
        if as_json:
            _dump(out)
        else:
            _print_plan(out)
        return
    progress = None if as_json else (lambda line: click.echo(f"  {line}", err=True)) if _verbose() else None
    result = Sandbox.create(image_dir, host=host, on_warning=_warn, on_progress=progress, **kw).created
    if as_json:
        _dump(result)
    elif fleet_address() is not None:
        _print_fleet_run(result)
    else:
        click.echo(f"{result['name']} is running ({result['vmm']}/{result['accel']}, {result['address']}); "
                   f"guest ready {result['ready_s']:.1f}s after VMM start, {result['run_s']:.1f}s in total")
        if result.get("root_ssh") is False:  # a bob image: its sshd admits only the searcher (docs/modules.md, bob)
            click.echo(f"  no exec/ssh into a bob sandbox: the searcher registers a key, then ssh searcher@{result['address']} COMMAND",
                       err=True)
        else:
            click.echo(f"  sealbox exec {result['name']} -- CMD    |    sealbox ssh {result['name']}", err=True)


def _run_host(state_dir: Path | None, host_labels: tuple[str, ...], flags: dict[str, Any]) -> Host:
    """`run`'s host: with --fleet the fleet, restricted to hosts with --host-label's labels."""
    if fleet_address() is None:
        if host_labels:
            raise click.UsageError("--host-label places a sandbox on a fleet: it needs --fleet HEAD_IP:PORT")
        return local_host(state_dir)
    from sealbox.cli import fleetopt

    if flags["from_snapshot"]:
        fleetopt.refuse("--from-snapshot", "a snapshot lives on the host that took it")
    if state_dir is not None:
        fleetopt.refuse("--state-dir", "each host of the fleet keeps its own state")
    from sealbox.fleet.join import parse_labels

    need = parse_labels(host_labels)  # before joining the fleet: bad input is said at once
    fleet = fleetopt.fleet(fleet_address() or "")
    return fleet.requiring(**need) if need else fleet


def _print_fleet_run(result: dict[str, Any]) -> None:
    """The local line, with the host the fleet placed it on (every value shown is the agent's: cleaned)."""
    from sealbox.fleet.wire import text

    def get(key: str) -> str:
        return text(str(result.get(key, "-")), 100)

    def secs(key: str) -> str:
        v = result.get(key)
        return f"{v:.1f}s" if isinstance(v, int | float) and not isinstance(v, bool) else "-"

    click.echo(f"{get('name')} is running on {get('host')} ({get('vmm')}/{get('accel')}, {get('address')}); "
               f"placed in {secs('placed_s')}, {secs('fleet_s')} in total")
    click.echo(f"  sealbox --fleet {fleet_address()} exec {get('name')} -- CMD", err=True)


def _verbose() -> bool:
    import logging

    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def _print_plan(out: dict[str, Any]) -> None:
    import shlex  # here: `sealbox ps` imports this module

    click.echo(f"dry run: sandbox {out['name']} with {out['vmm']} ({out['accel']}), image {out['image']['name']} "
               f"(kernel {out['image']['kernel_version']}), guest {out['network']['guest_ip']}")
    click.echo("host steps:")
    for i, s in enumerate(out["steps"], 1):
        click.echo(f"  {i:2}. {s['describe']}")
    if out.get("cmdline"):
        click.echo(f"kernel command line: {out['cmdline']}")
    if "argv" in out:
        click.echo("VMM command line:")
        click.echo("  " + shlex.join(out["argv"]))
    if "jailer_argv" in out:
        click.echo("jailer command line:")
        click.echo("  " + shlex.join(out["jailer_argv"]))
    if out.get("config") is not None:
        click.echo("Firecracker config:")
        click.echo(json.dumps(out["config"], indent=2))


@click.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Also show stopped, exited and failed sandboxes.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Only sandboxes with this label (repeatable: all must match).")
@click.option("--json", "as_json", is_flag=True)
@state_opt
def ps(all_: bool, labels: tuple[str, ...], as_json: bool, state_dir: Path | None) -> None:
    """List sandboxes (status checked against the live VMM processes)."""
    from sealbox.sandbox import status
    from sealbox.sdk.sandbox import Sandbox

    host = target_host(state_dir)
    rows = Sandbox.list(host=host, all=all_, labels=_labels(labels))
    hosts_of = getattr(host, "hosts_of", None)  # a fleet's: each sandbox's host
    where = hosts_of() if hosts_of is not None else None
    if as_json:
        _dump([r.model_dump() if where is None else {**r.model_dump(), "host": where.get(r.name)} for r in rows])
    else:
        click.echo(status.table(rows, hosts=where))


@click.command()
@click.argument("name")
@state_opt
def inspect(name: str, state_dir: Path | None) -> None:
    """Show a sandbox's record, host steps, pids and the VMM's own view (JSON)."""
    _dump(sandbox_handle(name, state_dir).inspect())


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the VMM exits (or Ctrl-C).")
@click.option("--raw", is_flag=True, help="The guest's bytes as they are, even on a terminal (escaped there by default).")
@state_opt
def logs(name: str, follow: bool, raw: bool, state_dir: Path | None) -> None:
    """Print a sandbox's serial console log: on a terminal every control character is shown escaped, colours kept
    unless NO_COLOR; raw bytes with --raw or into a pipe."""
    from sealbox.cli.common import colour_allowed
    from sealbox.sandbox.termsafe import TerminalEscaper

    out = sys.stdout.buffer
    esc = None if raw or not sys.stdout.isatty() else TerminalEscaper(colour=colour_allowed(sys.stdout))
    try:
        for chunk in sandbox_handle(name, state_dir).logs_stream(follow=follow):
            out.write(esc.feed(chunk) if esc else chunk)
            out.flush()
    except KeyboardInterrupt:
        pass
    if esc:
        out.write(esc.flush())
        out.flush()


@click.command()
@click.argument("name")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=30.0, show_default=True,
              help="Seconds to wait for a clean shutdown before killing the VMM.")
@state_opt
def stop(name: str, timeout: float, state_dir: Path | None) -> None:
    """Shut a sandbox's guest down (graceful, then killed after --timeout)."""
    how = sandbox_handle(name, state_dir).stop(timeout)
    click.echo(f"{name} stopped ({how})")


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Also remove a running sandbox (its VMM is killed).")
@click.option("--snapshots", is_flag=True, help="Also delete the snapshots taken from it (kept otherwise; also once it is gone).")
@state_opt
def rm(names: tuple[str, ...], force: bool, snapshots: bool, state_dir: Path | None) -> None:
    """Remove sandboxes: undo every host step of their records and delete their state."""
    from sealbox.sdk.sandbox import Sandbox

    if snapshots and fleet_address() is not None:
        from sealbox.cli import fleetopt

        fleetopt.refuse("--snapshots", "snapshots live on the host that took them")
    host = target_host(state_dir)
    for name in names:
        sb = Sandbox(name, host)
        if not snapshots or cast("LocalHost", host).state.exists(name):  # --snapshots (local only): also once it is gone
            sb.remove(force=force)
            click.echo(f"removed {name}")
        for path in sb.remove_snapshots() if snapshots else []:
            click.echo(f"removed snapshot {path}")


@click.command()
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--orphans", is_flag=True,
              help="Also remove what state dirs that no longer exist left on this host (their sandboxes included).")
@click.option("--json", "as_json", is_flag=True)
@state_opt
def gc(dry_run: bool, orphans: bool, as_json: bool, state_dir: Path | None) -> None:
    """Remove dead or half-created sandboxes and sealbox host objects no sandbox owns."""
    report = local_host(state_dir).gc(dry_run=dry_run, orphans=orphans)
    if as_json:
        _dump(report.model_dump())
    else:
        for line in report.removed:
            click.echo(f"removed {line}" if not dry_run else line)
        if not report.removed:
            click.echo("nothing to remove")
        for line in report.skipped:
            click.echo(f"sealbox: skipped {line}", err=True)
        for line in report.foreign:
            click.echo(f"sealbox: not ours (another state dir?), left alone: {line}", err=True)
        if report.foreign and not orphans:
            click.echo("sealbox: objects of a state dir that was deleted go with 'sealbox gc --orphans'", err=True)
        for line in report.problems:
            click.echo(f"sealbox: gc problem: {line}", err=True)
    if report.problems:
        sys.exit(1)
