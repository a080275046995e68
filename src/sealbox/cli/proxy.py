"""`sealbox _proxy NAME`: hidden helper used as ssh ProxyCommand (stdin/stdout <-> guest:22)."""

from __future__ import annotations

import click


@click.command("_proxy", hidden=True)
@click.argument("name")
@click.option("--port", default=22, show_default=True, type=click.IntRange(1, 65535))
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 300), help="Connect timeout (s).")
@click.option("--state-dir", default=None, type=click.Path(file_okay=False), help="State directory.")
def proxy_cmd(name: str, port: int, timeout: float, state_dir: str | None) -> None:
    """Connect stdin/stdout to a port of the sandbox's guest, from inside its network namespace."""
    from pydantic import ValidationError

    from sealbox.errors import SandboxError
    from sealbox.sandbox.control import check_access
    from sealbox.sandbox.host.proxy import proxy
    from sealbox.sandbox.model import GuestNet
    from sealbox.sandbox.state import StateDir, state_root

    root = state_root(state_dir)
    check_access(root, "sealbox _proxy")
    record = StateDir(root).load(name)
    try:
        net = GuestNet.model_validate(record.network)
    except ValidationError:
        raise SandboxError(f"sandbox {name!r} has no network recorded (status {record.status})", hint="see 'sealbox ps --all'") from None
    proxy(net.netns, str(net.guest_ip), port, connect_timeout=timeout)
