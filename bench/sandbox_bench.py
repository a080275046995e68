"""Bench: the sandbox runtime against baselines measured in the same run (root, real QEMU).

  overhead  host-side cost of `run` (everything but the QEMU start; guest boot excluded via a stand-in
            readiness check) and of `rm` of that running sandbox (everything but the QEMU stop), vs. a shell
            doing the same host steps with ip/nft/mount/ssh-keygen/cgroupfs/install (baseline, see below).
            Targets: run and rm <= 250 ms. Also CLI start-up (`sealbox ps`, median of 7) vs a bare interpreter.
  boot      boot-to-ready of a real sandbox vs. the same kernel with a trivial init (static C program
            printing a marker) under the same accelerator and QEMU machine. Target <= 2.5x. Also, in each
            booted sandbox, `sealbox exec -- true` (median of 3) and a graceful `sealbox stop`.
  density   how many sandboxes run at once with all reachable (exec `true` in each); target 16.
            Always removes them again (also on Ctrl-C). Also reports QEMU RSS beyond guest RAM.

  uki       boot-to-ready of the image's UKI under OVMF vs its direct kernel boot, same memory and TCG.

Usage: python bench/sandbox_bench.py IMAGE_DIR [overhead|boot|uki|density|all] [--count N] [--memory MIB]
Figures go to stdout; nothing is left behind (private state dir, names sbbench-*).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sealbox.sandbox import lifecycle, manager
from sealbox.sandbox import steps as steps_mod
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.vmm.qemu import host_tsc_khz, tb_size_mib
from sealbox.util.procmem import rss_split_kib

PREFIX = "sbbench"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---- overhead -----------------------------------------------------------------------------------
# Like for like: both sides do the same host steps for one isolated sandbox — network namespace (lo up, IPv6 and
# forwarding off), nft table, TAP owned by the VMM user with its address, console-log tmpfs with a size cap, client
# key + instance disk file, cgroup with memory/cpu/pids limits (v1 or v2 as the host has it), run dir owned by the
# VMM user. sealbox's figure is its whole `run` up to the VMM start (so its state records, locks and address
# allocation count against it) and excludes only the QEMU start step, timed apart. The baseline puts a stand-in
# process in the cgroup and stops it before its timed teardown; sealbox's rm figure excludes the QEMU stop likewise.

BASELINE_SH = r"""
set -e
ns=sbbase-$1; d=$2; uid=$3; gid=$4; cgv=$5
ip netns add $ns
ip netns exec $ns sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 0 > /proc/sys/net/ipv4/ip_forward'
ip -n $ns link set lo up
printf '%s\n' 'table inet sealbox {' \
  '  chain input { type filter hook input priority 0; policy drop; ct state established,related accept; iif lo accept; }' \
  '  chain forward { type filter hook forward priority 0; policy drop; ip daddr 169.254.169.254 drop; }' \
  '}' | ip netns exec $ns nft -f -
ip -n $ns tuntap add dev tap0 mode tap vnet_hdr user $uid group $gid
ip -n $ns addr add 10.254.0.1/30 dev tap0
ip -n $ns link set tap0 up
mkdir -p $d/console
mount -t tmpfs -o size=16m,nr_inodes=64,mode=0700,nodev,nosuid,noexec sbbase $d/console
ssh-keygen -q -t ed25519 -N '' -f $d/id_ed25519
head -c 4096 /dev/zero > $d/instance.img
if [ "$cgv" = 2 ]; then
  cg=/sys/fs/cgroup/sbbase-$1; mkdir $cg
  echo 805306368 > $cg/memory.max; echo "200000 100000" > $cg/cpu.max; echo 256 > $cg/pids.max
else
  for c in memory cpu pids; do mkdir -p /sys/fs/cgroup/$c/sbbase-$1; done
  echo 805306368 > /sys/fs/cgroup/memory/sbbase-$1/memory.limit_in_bytes
  echo 200000 > /sys/fs/cgroup/cpu/sbbase-$1/cpu.cfs_quota_us
  echo 256 > /sys/fs/cgroup/pids/sbbase-$1/pids.max
fi
install -d -m 0700 -o $uid -g $gid $d/vmm
touch $d/console/console.log
# a stand-in for the VMM process, in the cgroup, detached so that init reaps it when the teardown kills it
sleep 600 </dev/null >/dev/null 2>&1 &
echo $! > $d/vmm.pid
if [ "$cgv" = 2 ]; then echo $! > /sys/fs/cgroup/sbbase-$1/cgroup.procs; else echo $! > /sys/fs/cgroup/pids/sbbase-$1/cgroup.procs; fi
"""
# the stand-in's stop is timed apart, as sealbox's QEMU stop is: it is not a host object's teardown
STOP_STAND_IN_SH = r"""
d=$1
if [ -s $d/vmm.pid ]; then pid=$(cat $d/vmm.pid); kill -9 $pid; while kill -0 $pid 2>/dev/null; do sleep 0.001; done; fi
"""
TEARDOWN_SH = r"""
ns=sbbase-$1; d=$2; cgv=$3
umount $d/console; rm -rf $d/vmm $d/vmm.pid $d/console $d/id_ed25519 $d/id_ed25519.pub $d/instance.img
ip netns del $ns
if [ "$cgv" = 2 ]; then rmdir /sys/fs/cgroup/sbbase-$1; else for c in memory cpu pids; do rmdir /sys/fs/cgroup/$c/sbbase-$1; done; fi
"""


def _stand_in_ready(net: Any, *_a: Any, **_kw: Any) -> dict[str, Any]:
    """STAND-IN readiness: return as soon as the VMM answers (the guest boot is not host overhead)."""
    return {"boot_id": None, "hostkeys": ["ssh-ed25519 stand-in"], "banner": "stand-in"}


class StepTimer:
    """Times every host step's do() and undo() by kind, in-process (patched on the Step subclasses)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self._saved: list[tuple[type, str, Any]] = []

    def __enter__(self) -> StepTimer:
        from sealbox.sandbox import stepkinds

        stepkinds.load_all()  # every step class defined before patching (backends import theirs lazily)
        classes: set[type] = set()
        todo: list[type] = [steps_mod.Step]
        while todo:
            for sub in todo.pop().__subclasses__():
                classes.add(sub)
                todo.append(sub)
        for cls in classes:
            for method in ("do", "undo"):
                if method in cls.__dict__:
                    self._wrap(cls, method)
        return self

    def _wrap(self, cls: type, method: str) -> None:
        original = cls.__dict__[method]
        times = self.times

        def timed(step: Any, *a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(step, *a, **kw)
            finally:
                times.setdefault(f"{step.kind}.{method}", []).append(time.perf_counter() - t0)

        self._saved.append((cls, method, original))
        setattr(cls, method, timed)

    def __exit__(self, *exc: object) -> None:
        for cls, method, original in self._saved:
            setattr(cls, method, original)

    def last(self, key: str) -> float:
        return self.times[key][-1] if self.times.get(key) else 0.0


def _baseline_round(i: int, uid: int, gid: int, cgv: int) -> tuple[float, float]:
    """(setup, teardown) seconds of the shell baseline; the teardown runs whatever the setup reached."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="sbbase-") as d:
        t0 = time.perf_counter()
        try:
            subprocess.run(["sh", "-c", BASELINE_SH, "sh", str(i), d, str(uid), str(gid), str(cgv)],
                           check=True, capture_output=True, timeout=60)
            setup = time.perf_counter() - t0
        finally:
            subprocess.run(["sh", "-c", STOP_STAND_IN_SH, "sh", d], capture_output=True, timeout=60)
            t0 = time.perf_counter()
            subprocess.run(["sh", "-c", TEARDOWN_SH, "sh", str(i), d, str(cgv)], capture_output=True, timeout=60)
            teardown = time.perf_counter() - t0
    return setup, teardown


def _cli_startup(state: StateDir, runs: int) -> dict[str, Any]:
    """`sealbox ps` (interpreter + imports + one command) vs the bare interpreter, each the median of `runs`."""
    def one(argv: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        return time.perf_counter() - t0

    ps = [one([sys.executable, "-m", "sealbox.cli.main", "ps", "--state-dir", str(state.root)]) for _ in range(runs)]
    bare = [one([sys.executable, "-c", "pass"]) for _ in range(runs)]
    return {"cli_ps_s": median(ps), "cli_ps_min_s": min(ps), "python_bare_s": median(bare), "cli_runs": runs}


def bench_overhead(image: Path, state: StateDir, rounds: int) -> dict[str, Any]:
    from sealbox.sandbox.host import cgroups
    from sealbox.sandbox.host.users import ensure_vmm_user

    user = ensure_vmm_user()
    uid, gid = user.uid, user.gid
    cgv = cgroups.detect().version
    runs, vmm, rms, vmm_stop, base, base_rm = [], [], [], [], [], []
    real_wait = lifecycle.wait_ready
    lifecycle.wait_ready = _stand_in_ready  # type: ignore[assignment]
    try:
        with StepTimer() as timer:
            for i in range(rounds):
                name = f"{PREFIX}-ovh{i}"
                spec = manager.make_spec(name=name, image_dir=image, accel="tcg", memory_mib=512)
                t0 = time.perf_counter()
                manager.run(spec, state)
                total = time.perf_counter() - t0
                vmm.append(timer.last("qemu-start.do"))
                runs.append(total - vmm[-1])
                t0 = time.perf_counter()
                manager.remove(state, name, force=True)
                total = time.perf_counter() - t0
                vmm_stop.append(timer.last("qemu-start.undo"))
                rms.append(total - vmm_stop[-1])
                setup, teardown = _baseline_round(i, uid, gid, cgv)
                base.append(setup)
                base_rm.append(teardown)
            per_step = {k: median(v) for k, v in sorted(timer.times.items()) if v}
    finally:
        lifecycle.wait_ready = real_wait  # type: ignore[assignment]
    cli = _cli_startup(state, 7)
    out = {"run_setup_s": median(runs), "vmm_start_s": median(vmm), "rm_running_s": median(rms), "vmm_stop_s": median(vmm_stop),
           "baseline_setup_s": median(base), "baseline_teardown_s": median(base_rm), "rounds": rounds,
           "step_times_s": per_step, **cli}
    print(f"run: sealbox host setup {out['run_setup_s'] * 1000:.0f} ms vs shell baseline doing the same steps "
          f"{out['baseline_setup_s'] * 1000:.0f} ms -> ratio {out['run_setup_s'] / out['baseline_setup_s']:.2f}x "
          f"(median of {rounds}; target: setup <= 250 ms); QEMU start until QMP answers {out['vmm_start_s'] * 1000:.0f} ms, not included")
    print(f"rm (running sandbox): sealbox {out['rm_running_s'] * 1000:.0f} ms vs baseline teardown "
          f"{out['baseline_teardown_s'] * 1000:.0f} ms -> ratio {out['rm_running_s'] / out['baseline_teardown_s']:.2f}x "
          f"(target <= 250 ms); QEMU stop {out['vmm_stop_s'] * 1000:.0f} ms, not included")
    print(f"CLI start-up: sealbox ps {cli['cli_ps_s'] * 1000:.0f} ms (median of {cli['cli_runs']}, min {cli['cli_ps_min_s'] * 1000:.0f}) "
          f"vs bare interpreter {cli['python_bare_s'] * 1000:.0f} ms -> ratio {cli['cli_ps_s'] / cli['python_bare_s']:.2f}x")
    print("sealbox host steps (median ms): " + ", ".join(f"{k} {v * 1000:.0f}" for k, v in per_step.items()))
    return out


# ---- boot ---------------------------------------------------------------------------------------

TRIVIAL_INIT = r"""
#include <fcntl.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/reboot.h>
int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    int fd = open("/dev/console", O_WRONLY);
    write(fd, "TRIVIAL-INIT-READY\n", 19);
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}
"""
MARKER = b"TRIVIAL-INIT-READY"


def trivial_initrd(work: Path) -> Path:
    if shutil.which("gcc") is None or shutil.which("cpio") is None:
        raise SystemExit("boot bench: gcc (static libc) and cpio are needed for the trivial-init baseline")
    tree = work / "tree"
    (tree / "dev").mkdir(parents=True)
    (work / "init.c").write_text(TRIVIAL_INIT)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(tree / "init"), str(work / "init.c")], check=True, timeout=120)
    out = work / "trivial.cpio"
    with open(out, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=tree, input=b"init\ndev\n", stdout=f, check=True)
    return out


def baseline_boot(kernel: Path, initrd: Path, memory: int, cpus: int, timeout: float = 120) -> float:
    tsc = host_tsc_khz()
    argv = ["qemu-system-x86_64", "-M", "microvm", "-accel", f"tcg,tb-size={tb_size_mib(memory)}", "-smp", str(cpus), "-m", f"{memory}M",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 rdinit=/init{f' tsc_early_khz={tsc}' if tsc else ''}"]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    buf = b""
    try:
        assert p.stdout is not None
        os.set_blocking(p.stdout.fileno(), False)
        while MARKER not in buf:
            if time.perf_counter() - t0 > timeout or p.poll() is not None and MARKER not in buf:
                raise SystemExit(f"baseline guest did not print its marker: {buf[-300:]!r}")
            chunk = p.stdout.read(65536)
            if chunk:
                buf += chunk
            else:
                time.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        p.kill()
        p.wait(timeout=10)


def _cli(state: StateDir, verb: str, *args: str, timeout: float = 300) -> float:
    """Seconds of one `sealbox VERB --state-dir … ARGS` (the option before ARGS: `exec NAME -- CMD` ends with CMD)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sealbox.cli.main", verb, "--state-dir", str(state.root), *args], check=True,
                   capture_output=True, timeout=timeout)
    return time.perf_counter() - t0


def _boot_to_ready(image: Path, state: StateDir, name: str, memory: int, **flags: Any) -> tuple[float, float, float, float]:
    """(VMM start -> ready, whole run, `sealbox exec -- true` median of 3, graceful `sealbox stop`), removing it after."""
    spec = manager.make_spec(name=name, image_dir=image, accel="tcg", memory_mib=memory, **flags)
    try:
        r = manager.run(spec, state)
        g = state.load(name).guest
        execs = [_cli(state, "exec", name, "--", "true") for _ in range(3)]
        stop = _cli(state, "stop", name)
        return g["vmm_start_s"] + g["ready_s"], r["run_s"], median(execs), stop
    finally:
        if state.exists(name):
            manager.remove(state, name, force=True)


def bench_boot(image: Path, state: StateDir, rounds: int, memory: int) -> dict[str, Any]:
    manifest = json.loads((image / "manifest.json").read_text())
    kernel = image / manifest["boot"]["vmlinuz"]
    base, ours, total, execs, stops = [], [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        initrd = trivial_initrd(Path(d))
        for i in range(rounds):
            spec = manager.make_spec(name=f"{PREFIX}-boot{i}", image_dir=image, accel="tcg", memory_mib=memory)
            base.append(baseline_boot(kernel, initrd, memory, spec.cpus))  # same machine: memory, vCPUs, TCG cache
            ready, run, ex, stop = _boot_to_ready(image, state, f"{PREFIX}-boot{i}", memory)
            ours.append(ready)
            total.append(run)
            execs.append(ex)
            stops.append(stop)
    out = {"baseline_boot_s": median(base), "sandbox_boot_to_ready_s": median(ours), "sandbox_run_total_s": median(total),
           "exec_true_s": median(execs), "graceful_stop_s": median(stops), "rounds": rounds}
    print(f"boot: trivial init {out['baseline_boot_s']:.1f}s; sandbox VMM start -> ready {out['sandbox_boot_to_ready_s']:.1f}s "
          f"(whole run {out['sandbox_run_total_s']:.1f}s) -> ratio {out['sandbox_boot_to_ready_s'] / out['baseline_boot_s']:.2f}x "
          f"(target <= 2.5x; median of {rounds}, TCG, -m {memory})")
    print(f"then: sealbox exec -- true {out['exec_true_s']:.2f}s (CLI, median of 3 per boot); graceful sealbox stop {out['graceful_stop_s']:.1f}s")
    return out


def bench_uki(image: Path, state: StateDir, rounds: int, memory: int) -> dict[str, Any]:
    """The image's UKI under OVMF (q35, UEFI firmware, the stub, measured boot path) vs its direct kernel boot."""
    uki, direct = [], []
    for i in range(rounds):
        direct.append(_boot_to_ready(image, state, f"{PREFIX}-dir{i}", memory)[0])
        uki.append(_boot_to_ready(image, state, f"{PREFIX}-uki{i}", memory, firmware="ovmf")[0])
    out = {"uki_ovmf_boot_to_ready_s": median(uki), "direct_boot_to_ready_s": median(direct), "rounds": rounds}
    print(f"UKI + OVMF: VMM start -> ready {out['uki_ovmf_boot_to_ready_s']:.1f}s vs direct kernel boot "
          f"{out['direct_boot_to_ready_s']:.1f}s -> ratio {out['uki_ovmf_boot_to_ready_s'] / out['direct_boot_to_ready_s']:.2f}x "
          f"(median of {rounds}, TCG, -m {memory})")
    return out


# ---- density ------------------------------------------------------------------------------------

def bench_density(image: Path, state: StateDir, count: int, memory: int, parallel: int) -> dict[str, Any]:
    names = [f"{PREFIX}-d{i:02d}" for i in range(count)]
    started: list[str] = []
    failures: dict[str, str] = {}
    t0 = time.perf_counter()

    def start(name: str) -> None:
        # separate `sealbox run` processes, as users start them (and no fork() from a threaded process)
        argv = [sys.executable, "-m", "sealbox.cli.main", "run", str(image), "--name", name, "--accel", "tcg",
                "--memory", str(memory), "--timeout", "900", "--state-dir", str(state.root)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=1000)
        if p.returncode == 0:
            started.append(name)
        else:
            failures[name] = p.stderr.strip()[-300:]

    try:
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(start, names))
        boot_all = time.perf_counter() - t0
        reachable = []
        for name in started:
            p = subprocess.run([sys.executable, "-m", "sealbox.cli.main", "exec", name, "--state-dir", str(state.root), "--", "true"],
                               capture_output=True, timeout=120)
            if p.returncode == 0:
                reachable.append(name)
        extra = []
        for name in started:
            qpid = manager.inspect(state, name).get("vmm_view", {}).get("qemu_pid")
            if qpid:
                extra.append(rss_split_kib(qpid, memory))
        out = {"requested": count, "running": len(started), "reachable": len(reachable), "boot_all_s": boot_all,
               "guest_ram_rss_mib": median([g / 1024 for g, _ in extra]), "qemu_rss_beyond_guest_mib": median([o / 1024 for _, o in extra]),
               "failures": failures}
        print(f"density: {len(reachable)}/{count} sandboxes running and reachable at once (-m {memory}, TCG, "
              f"{parallel} started in parallel; all up after {boot_all:.0f}s); target 16")
        print(f"QEMU RSS per sandbox: guest RAM touched {out['guest_ram_rss_mib']:.0f} MiB, everything else "
              f"{out['qemu_rss_beyond_guest_mib']:.0f} MiB (median; TCG translation cache {tb_size_mib(memory)} MiB included)")
        for n, e in failures.items():
            print(f"  {n}: {e}")
        return out
    finally:
        for name in names:
            if state.exists(name):
                try:
                    manager.remove(state, name, force=True)
                except Exception as e:  # noqa: BLE001
                    print(f"cleanup of {name} failed: {e}; run 'sealbox gc --state-dir {state.root}'")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("what", nargs="?", default="all", choices=["overhead", "boot", "uki", "density", "all"])
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--memory", type=int, default=256, help="guest MiB for density (boot uses 512)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("the sandbox bench needs root", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="sealbox-bench-"))
    state = StateDir(root)
    figures: dict[str, Any] = {}
    try:
        if a.what in ("overhead", "all"):
            figures["overhead"] = bench_overhead(a.image, state, a.rounds)
        if a.what in ("boot", "all"):
            figures["boot"] = bench_boot(a.image, state, max(1, a.rounds - 1), 512)
        if a.what in ("uki", "all"):
            figures["uki"] = bench_uki(a.image, state, max(1, a.rounds - 1), 512)
        if a.what in ("density", "all"):
            figures["density"] = bench_density(a.image, state, a.count, a.memory, a.parallel)
    finally:
        report = manager.collect(state)
        if report.removed or report.problems:
            print(f"gc after bench: removed {report.removed} problems {report.problems}")
        shutil.rmtree(root, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
