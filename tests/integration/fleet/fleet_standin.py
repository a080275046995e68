"""STAND-IN for a fleet host's local manager (none of this is product code): the Host protocol over plain
processes, for fleet tests where booting guests under TCG would be too slow.

A "sandbox" is a `sleep` process in the simulated host's network namespace (where the host agent runs),
recorded as SANDBOXES/<name>.json under the host's $SEALBOX_STATE_DIR; a command runs as `sh -c` in that same
namespace, in the sandbox's own directory SANDBOXES/<name>.d (so a file written through `sb.files` with a
relative path lands there), so what it prints (the namespace's addresses) shows which host it ran on. `gc`
removes the records of sandboxes whose process died, as `sealbox gc` removes exited sandboxes. The label
`standin.create_s=SECONDS` makes a create take that long with its record and process already made, without
watching `cancel` (a boot that cannot be interrupted: what undoes it is the fleet's own check). Everything the fleet
layer does around it — Ray nodes, placement groups, KV records, the agent actor, routing, pumping the
pipes — is real. Loaded by the agent as host factory `fleet_standin:StandinHost` (on the nodes' PYTHONPATH).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sealbox.errors import NotFound
from sealbox.sandbox.gc import GcReport
from sealbox.sandbox.status import PsRow
from sealbox.sdk.options import CreateOptions

SLEEP_S = "600"  # a stand-in sandbox lives at most this long, whatever happens to the test


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class StandinHost:
    def __init__(self) -> None:
        self.root = None  # not this machine's runtime: the agent skips doctor
        self.dir = Path(os.environ["SEALBOX_STATE_DIR"]) / "standin"
        self.dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"StandinHost({str(self.dir)!r})"

    def _load(self, name: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self.dir / f"{name}.json").read_text()))
        except FileNotFoundError:
            raise NotFound(f"no sandbox named {name!r}") from None

    def create(self, opts: CreateOptions, *, warn: Any = None, progress: Any = None, holder: int | None = None,
               cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        proc = subprocess.Popen(["sleep", SLEEP_S], start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rec = {"name": opts.name, "pid": proc.pid, "cpus": opts.cpus, "memory_mib": opts.memory_mib, "labels": opts.labels,
               "created_at": time.time()}
        (self.dir / f"{opts.name}.d").mkdir(exist_ok=True)
        (self.dir / f"{opts.name}.json").write_text(json.dumps(rec))
        time.sleep(min(float(opts.labels.get("standin.create_s", "0")), 120.0))
        return {"name": opts.name, "pid": proc.pid}

    def plan(self, opts: CreateOptions) -> dict[str, Any]:
        return {}

    def info(self, name: str) -> PsRow:
        r = self._load(name)
        return PsRow(name=name, status="running" if alive(r["pid"]) else "exited", vmm="standin", cpus=r["cpus"],
                     memory_mib=r["memory_mib"], labels=r["labels"], created_at=r["created_at"])

    def list(self, *, all_: bool = False, labels: Mapping[str, str] | None = None) -> builtins.list[PsRow]:
        rows = [self.info(p.stem) for p in sorted(self.dir.glob("*.json"))]
        return [r for r in rows if (all_ or r.status == "running") and all(r.labels.get(k) == v for k, v in (labels or {}).items())]

    def remove(self, name: str, *, force: bool = False) -> None:
        pid = self._load(name)["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir / f"{name}.d", ignore_errors=True)
        (self.dir / f"{name}.json").unlink()

    def gc(self) -> GcReport:
        gone = [r.name for r in self.list(all_=True) if r.status == "exited"]
        for name in gone:
            self.remove(name, force=True)
        return GcReport(removed=[f"sandbox {n}: its process is gone" for n in gone])

    def stop(self, name: str, timeout: float) -> str:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._load(name)["pid"], signal.SIGKILL)
        return "killed"

    def inspect(self, name: str) -> dict[str, Any]:
        return self._load(name)

    def logs(self, name: str, *, follow: bool = False, max_seconds: float | None = None) -> Iterator[bytes]:
        self._load(name)
        yield b"stand-in console\n"

    def spawn(self, name: str, remote: str, *, user: str | None, stdin: bool) -> tuple[Any, Callable[[], None]]:
        self._load(name)
        proc = subprocess.Popen(["sh", "-c", remote], stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "STANDIN_SANDBOX": name},
                                cwd=self.dir / f"{name}.d")
        return proc, lambda: None

    def disconnect(self, name: str) -> None:
        return None
