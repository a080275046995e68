#!/usr/bin/python3 -I
"""bob's mode switch (guest side, runs as root): the state machine maintenance -> production -> stopped -> maintenance.

Installed as /usr/lib/sealbox/bob/bob-mode. The searcher never runs it directly: the searcher's shell (bob-shell)
sends one request line ("status" or "toggle") over a root-owned socket whose service runs this program with the
connection as stdin/stdout, and relays the one JSON line it answers ({"rc": N, "out": TEXT}).
`bob-mode boot` (a boot unit) loads the maintenance rule set before anything else listens.

Rules:
- every switch loads the new mode's nftables rule set (written into the image at build time from [bob], one whole
  ruleset per mode: /usr/lib/sealbox/bob/nft-<mode>.json) and then flushes connection tracking (IPv4 and IPv6), so
  no connection admitted by the old mode survives (a mid-stream packet is "new" to conntrack and meets the new rules);
- stopped -> maintenance is refused until `dwell_seconds` (config.json) have passed since production ended;
- maintenance -> production is refused unless `bob-netguard verify` (bob_netguard.py) finds the container-side drop
  rules of the input-only channel in the running container's network namespace: no container, no production;
- toggle and status need /persistent mounted (the state lives there, root-only, so it survives a reboot); a state
  left in production or stopped resumes as stopped, its dwell counted from the resume when production's end is
  unknown;
- `resume` (after initialize mounted /persistent) loads the recorded mode's rules, then starts the workload units;
- if loading or flushing fails, the guest falls back to the stopped rule set (the fewest openings) and records
  stopped with production ended now: never a half-switched mode.
The clock is the guest's wall clock, which the host controls (docs/modules.md, `bob`, limits).
Stdlib only: the guest has no sealbox package.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn, TextIO

MODES = ("maintenance", "production", "stopped")
NEXT = {"maintenance": "production", "production": "stopped", "stopped": "maintenance"}
LIB = "usr/lib/sealbox/bob"
PERSISTENT = "/persistent"
STATE = "persistent/.bob/state.json"
MAX_REQUEST = 64
TOOL_TIMEOUT = 30
WORKLOAD_UNITS = ("sealbox-bob-node.service", "sealbox-bob-logs.service", "sealbox-bob-workload.service")

Runner = Callable[[list[str]], int]


class Refused(Exception):
    """A request this state does not allow: its message is the one line the searcher sees."""


def _run(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=TOOL_TIMEOUT, check=False).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 127


def mounted(root: Path, point: str = PERSISTENT) -> bool:
    """Whether `point` is a mount point, from <root>/proc/self/mountinfo (field 5; octal escapes as the kernel writes)."""
    try:
        text = (root / "proc/self/mountinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == point:
            return True
    return False


@dataclass
class State:
    mode: str = "maintenance"
    since: float = 0.0  # when this mode was entered
    production_ended: float | None = None  # when production was last left (None: never, or not since the last maintenance)

    @classmethod
    def parse(cls, text: str) -> State:
        data = json.loads(text)
        mode, since, ended = data.get("mode"), data.get("since"), data.get("production_ended")
        if mode not in MODES or not isinstance(since, (int, float)) or not (ended is None or isinstance(ended, (int, float))):
            raise ValueError("not a bob state")
        return cls(mode, float(since), None if ended is None else float(ended))

    def text(self) -> str:
        return json.dumps({"mode": self.mode, "since": self.since, "production_ended": self.production_ended}) + "\n"


class Modes:
    def __init__(self, root: Path = Path("/"), clock: Callable[[], float] = time.time, run: Runner = _run) -> None:
        self.root, self.clock, self.run = root, clock, run
        self.state_path = root / STATE

    def dwell(self) -> int:
        try:
            value = json.loads((self.root / LIB / "config.json").read_text())["dwell_seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            raise Refused("bob: the image's config.json is missing or broken: no mode can change") from None
        if not isinstance(value, int) or value < 0:
            raise Refused("bob: dwell_seconds in the image's config.json is not a whole number of seconds")
        return value

    def load(self) -> State:
        """The recorded state; none yet: maintenance (a freshly initialised disk)."""
        try:
            return State.parse(self.state_path.read_text())
        except FileNotFoundError:
            return State(since=self.clock())
        except (OSError, ValueError, UnicodeDecodeError):
            # unreadable or tampered: treat as production that just ended (the most careful reading)
            now = self.clock()
            return State("stopped", now, now)

    def save(self, state: State) -> None:
        self.state_path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = self.state_path.with_name(".state.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(state.text())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def apply(self, mode: str) -> bool:
        """Load the mode's rule set, then flush conntrack; False if any step failed."""
        doc = self.root / LIB / f"nft-{mode}.json"
        ok = self.run(["nft", "-j", "-f", str(doc)]) == 0
        if ok:  # only after the new rules are in: a connection made in between would survive the flush
            ok = all(self.run(["conntrack", "-F", "-f", fam]) == 0 for fam in ("ipv4", "ipv6"))
        return ok

    def _require_mounted(self, what: str) -> None:
        if not mounted(self.root):
            raise Refused(f"{what}: refused until /persistent is mounted: run initialize first")

    def status(self) -> str:
        self._require_mounted("status")
        s, now = self.load(), self.clock()
        line = f"mode {s.mode} since {max(0, int(now - s.since))} s"
        if s.mode == "stopped":
            wait = self._wait(s, now, self.dwell())
            line += f"; maintenance possible in {wait} s" if wait else "; maintenance possible now"
        return line

    @staticmethod
    def _wait(s: State, now: float, dwell: int) -> int:
        """Seconds until maintenance is allowed again (a clock that went back counts as no time passed)."""
        if s.production_ended is None:
            return 0
        passed = max(0.0, now - s.production_ended)
        return max(0, int(dwell - passed + 0.999))

    def toggle(self) -> str:
        self._require_mounted("toggle")
        dwell, s, now = self.dwell(), self.load(), self.clock()
        target = NEXT[s.mode]
        if target == "maintenance":
            wait = self._wait(s, now, dwell)
            if wait:
                raise Refused(f"toggle: maintenance is refused for {wait} more s (production must have ended "
                              f"{dwell} s before; it ended {max(0, int(now - (s.production_ended or now)))} s ago)")
        if target == "production" and self.run([str(self.root / LIB / "bob-netguard"), "verify"]) != 0:
            raise Refused("toggle: production is refused: the container-side drop rules of the input-only channel are "
                          "not verified present in the container's network namespace (is the workload running?)")
        ended = now if s.mode == "production" else (None if target == "maintenance" else s.production_ended)
        # recorded first, loaded after: a record that fails leaves everything as it was, while rules loaded first
        # and a record that then failed (a full /persistent) would bring production back as maintenance at the
        # next boot, skipping the dwell time
        try:
            self.save(State(target, now, ended))
        except OSError as e:
            raise Refused(f"toggle: cannot record the mode on /persistent ({e.strerror or e}); nothing changed") from None
        if not self.apply(target):
            self._fall_back(s, now, f"toggle: switching to {target} failed")
        return f"mode {target} (was {s.mode}; connections of the old mode flushed)"

    def _fall_back(self, s: State, now: float, why: str) -> NoReturn:
        self.apply("stopped")  # best effort: the fewest openings
        # if this record fails, the one kept names the target (or the mode resumed): never maintenance before the dwell
        with contextlib.suppress(OSError):
            self.save(State("stopped", now, now))
        raise Refused(f"{why}: the guest fell back to stopped (maintenance again after the dwell time)")

    def resume(self) -> str:
        """After /persistent is mounted (initialize): restore the recorded mode's rules; production resumes as stopped."""
        self._require_mounted("resume")
        s, now = self.load(), self.clock()
        if s.mode == "production" or (s.mode == "stopped" and s.production_ended is None):
            s = State("stopped", now, now)  # when production ended is unknown: count the dwell from now
        if not self.apply(s.mode):
            self._fall_back(s, now, f"resume: loading {s.mode} failed")
        self.save(s)
        # only now, with the mode's rules in: the searcher's container and its delayed-log writer (bob-workload,
        # bob-logs), which need /persistent; --no-block: podman loading the image takes a while
        if self.run(["systemctl", "start", "--no-block", *WORKLOAD_UNITS]) != 0:
            return f"mode {s.mode} (but starting the workload failed)"
        return f"mode {s.mode}"

    def boot(self) -> str:
        """At boot, before /persistent: maintenance rules (the disk is locked; the container cannot run)."""
        if not self.apply("maintenance"):
            self.apply("stopped")
            raise Refused("boot: loading the maintenance rule set failed; stopped loaded instead")
        return "mode maintenance (boot)"

    def request(self, line: str) -> tuple[int, str]:
        """One request line from the searcher's shell -> (exit status, message)."""
        handlers = {"status": self.status, "toggle": self.toggle}
        word = line.strip()
        if word not in handlers:
            return 2, f"bob-mode: unknown request {word[:32]!r} (status, toggle)"
        try:
            return 0, handlers[word]()
        except Refused as e:
            return 1, str(e)


def serve(modes: Modes, stdin: BinaryIO, stdout: TextIO) -> int:
    """Read one bounded request line from stdin, answer one JSON line."""
    raw = stdin.readline(MAX_REQUEST + 1)
    if len(raw) > MAX_REQUEST or not raw.endswith(b"\n"):
        rc, out = 2, "bob-mode: request too long or not one line"
    else:
        try:
            rc, out = modes.request(raw.decode("ascii"))
        except UnicodeDecodeError:
            rc, out = 2, "bob-mode: request is not ASCII"
    stdout.write(json.dumps({"rc": rc, "out": out}) + "\n")
    stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    modes = Modes()
    if argv == ["serve"]:
        return serve(modes, sys.stdin.buffer, sys.stdout)
    actions = {"boot": modes.boot, "resume": modes.resume}
    if len(argv) != 1 or argv[0] not in actions:
        print("usage: bob-mode serve|boot|resume", file=sys.stderr)
        return 2
    try:
        print(actions[argv[0]]())
        return 0
    except Refused as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
