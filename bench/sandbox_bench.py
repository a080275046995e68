"""Bench: the sandbox runtime against baselines measured in the same run (root, real QEMU).

  overhead  host-side cost of `run` (up to a VMM answering on QMP; guest boot excluded via a stand-in
            readiness check) and of `rm` of that running sandbox, vs. a shell doing the same host
            operations with ip/nft/ssh-keygen/mkdir (baseline). Targets: run and rm <= 250 ms.
  boot      boot-to-ready of a real sandbox vs. the same kernel with a trivial init (static C program
            printing a marker) under the same accelerator and QEMU machine. Target <= 2.5x.
  density   how many sandboxes run at once with all reachable (exec `true` in each); target 16.
            Always removes them again (also on Ctrl-C). Also reports QEMU RSS beyond guest RAM.

Usage: python bench/sandbox_bench.py IMAGE_DIR [overhead|boot|density|all] [--count N] [--memory MIB]
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
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.vmm.qemu import host_tsc_khz, tb_size_mib
from sealbox.util.procmem import rss_split_kib

PREFIX = "sbbench"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---- overhead -----------------------------------------------------------------------------------

BASELINE_SH = r"""
set -e
ns=sbbase-$1; cg=sbbase-$1; d=$2
ip netns add $ns
ip netns exec $ns sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 0 > /proc/sys/net/ipv4/ip_forward'
ip -n $ns link set lo up
ip netns exec $ns nft -f - <<'EOF'
table inet sealbox {
  chain input { type filter hook input priority 0; policy drop; ct state established,related accept; iif lo accept; }
  chain forward { type filter hook forward priority 0; policy drop; ip daddr 169.254.169.254 drop; }
}
EOF
ip -n $ns tuntap add dev tap0 mode tap vnet_hdr user 65534
ip -n $ns addr add 10.254.0.1/30 dev tap0
ip -n $ns link set tap0 up
ssh-keygen -q -t ed25519 -N '' -f $d/id_ed25519
for c in memory cpu pids; do mkdir -p /sys/fs/cgroup/$c/$cg; done
echo 805306368 > /sys/fs/cgroup/memory/$cg/memory.limit_in_bytes
echo 100000 > /sys/fs/cgroup/cpu/$cg/cpu.cfs_quota_us
echo 256 > /sys/fs/cgroup/pids/$cg/pids.max
"""
TEARDOWN_SH = r"""
ip netns del sbbase-$1; for c in memory cpu pids; do rmdir /sys/fs/cgroup/$c/sbbase-$1; done
"""


def _stand_in_ready(net: Any, *_a: Any, **_kw: Any) -> dict[str, Any]:
    """STAND-IN readiness: return as soon as the VMM answers (the guest boot is not host overhead)."""
    return {"boot_id": None, "hostkeys": ["ssh-ed25519 stand-in"], "banner": "stand-in"}


def bench_overhead(image: Path, state: StateDir, rounds: int) -> dict[str, Any]:
    runs, vmm, rms, base, base_rm = [], [], [], [], []
    real_wait = lifecycle.wait_ready
    lifecycle.wait_ready = _stand_in_ready  # type: ignore[assignment]
    try:
        for i in range(rounds):
            name = f"{PREFIX}-ovh{i}"
            spec = manager.make_spec(name=name, image_dir=image, accel="tcg", memory_mib=512)
            t0 = time.perf_counter()
            manager.run(spec, state)
            total = time.perf_counter() - t0
            g = state.load(name).guest
            runs.append(g["setup_s"])
            vmm.append(total - g["setup_s"])
            t0 = time.perf_counter()
            manager.remove(state, name, force=True)
            rms.append(time.perf_counter() - t0)
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                try:
                    subprocess.run(["sh", "-c", BASELINE_SH, "sh", str(i), d], check=True, capture_output=True, timeout=60)
                    base.append(time.perf_counter() - t0)
                finally:
                    t0 = time.perf_counter()
                    done = subprocess.run(["sh", "-c", TEARDOWN_SH, "sh", str(i)], capture_output=True, timeout=60)
                    if done.returncode == 0:
                        base_rm.append(time.perf_counter() - t0)
    finally:
        lifecycle.wait_ready = real_wait  # type: ignore[assignment]
    # the CLI adds interpreter start-up and imports to every command: measure it separately
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sealbox.cli.main", "ps", "--state-dir", str(state.root)], check=True, capture_output=True, timeout=60)
    cli = time.perf_counter() - t0
    out = {"run_setup_s": median(runs), "vmm_start_s": median(vmm), "rm_running_s": median(rms),
           "baseline_setup_s": median(base), "baseline_teardown_s": median(base_rm), "cli_startup_s": cli}
    print(f"run: sealbox host setup {out['run_setup_s'] * 1000:.0f} ms (median of {rounds}) vs shell baseline "
          f"{out['baseline_setup_s'] * 1000:.0f} ms -> ratio {out['run_setup_s'] / out['baseline_setup_s']:.2f}x; "
          f"then QEMU start until QMP answers {out['vmm_start_s'] * 1000:.0f} ms (target: setup <= 250 ms)")
    print(f"rm (running sandbox, in-process): {out['rm_running_s'] * 1000:.0f} ms vs baseline teardown (no VMM) "
          f"{out['baseline_teardown_s'] * 1000:.0f} ms -> ratio {out['rm_running_s'] / out['baseline_teardown_s']:.2f}x (target <= 250 ms)")
    print(f"CLI start-up (sealbox ps): {cli * 1000:.0f} ms, added to every command line invocation")
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


def bench_boot(image: Path, state: StateDir, rounds: int, memory: int) -> dict[str, Any]:
    manifest = json.loads((image / "manifest.json").read_text())
    kernel = image / manifest["boot"]["vmlinuz"]
    base, ours, total = [], [], []
    with tempfile.TemporaryDirectory() as d:
        initrd = trivial_initrd(Path(d))
        for i in range(rounds):
            name = f"{PREFIX}-boot{i}"
            spec = manager.make_spec(name=name, image_dir=image, accel="tcg", memory_mib=memory)
            base.append(baseline_boot(kernel, initrd, memory, spec.cpus))  # same machine: memory, vCPUs, TCG cache
            try:
                r = manager.run(spec, state)
                g = state.load(name).guest
                ours.append(g["vmm_start_s"] + g["ready_s"])
                total.append(r["run_s"])
            finally:
                if state.exists(name):
                    manager.remove(state, name, force=True)
    out = {"baseline_boot_s": median(base), "sandbox_boot_to_ready_s": median(ours), "sandbox_run_total_s": median(total)}
    print(f"boot: trivial init {out['baseline_boot_s']:.1f}s; sandbox VMM start -> ready {out['sandbox_boot_to_ready_s']:.1f}s "
          f"(whole run {out['sandbox_run_total_s']:.1f}s) -> ratio {out['sandbox_boot_to_ready_s'] / out['baseline_boot_s']:.2f}x "
          f"(target <= 2.5x; median of {rounds}, TCG, -m {memory})")
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
    ap.add_argument("what", nargs="?", default="all", choices=["overhead", "boot", "density", "all"])
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
