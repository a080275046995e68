"""The gui module booted for real (QEMU/TCG, --rootfs disk, default memory): `sealbox rdp` opens its tunnel, the
real RDP client xfreerdp (under Xvfb) pins the certificate fingerprint `sealbox rdp` printed and logs in with the
password it printed, and a screenshot of the session shows the desktop. A wrong fingerprint and a wrong password get
no session. The RDP port is reachable only through the tunnel: not from the sandbox's network namespace, not on any
guest address but loopback, and the tunnel listens on the host's loopback only. One boot for the whole module.

The screenshots (PNG) stay in the test's tmp dir as artifacts, with the measured times (gui-timings.json)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rt_integ import Sealbox, end_process, leftovers, wait_for

from gui_image import gui_image
from sealbox.sandbox.host.netns import connect_in_netns

pytestmark = [pytest.mark.integration, pytest.mark.boot]

USER = "desktop"
SIZE = (1024, 768)
TIMES: dict[str, float] = {}


def _need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed (scripts/setup.sh installs xvfb, freerdp2-x11 and imagemagick)")


@pytest.fixture(scope="module")
def desk(sealbox: Sealbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    img = gui_image()
    name = f"{sealbox.prefix}-gui"
    t0 = time.monotonic()
    p = sealbox("run", str(img), "--name", name, "--rootfs", "disk", "--accel", "tcg", "--timeout", "300", timeout=330)
    assert p.returncode == 0, p.stderr
    rec = sealbox.record(name)
    assert rec is not None
    TIMES.update(run_s=round(time.monotonic() - t0, 1), ready_after_vmm_start_s=rec["guest"]["ready_s"],
                 memory_mib=rec["spec"]["memory_mib"])
    try:
        yield name
    finally:
        out = tmp_path_factory.getbasetemp() / "gui-timings.json"
        out.write_text(json.dumps(TIMES, indent=2, sort_keys=True) + "\n")
        print(f"\ngui timings ({out}): {json.dumps(TIMES, sort_keys=True)}")
        sealbox("rm", "--force", name, timeout=120)
        assert leftovers(sealbox.state_dir, name) == []


class Tunnel:
    """A running `sealbox rdp NAME --json` and the facts it printed."""

    def __init__(self, sealbox: Sealbox, name: str, *extra: str) -> None:
        self.proc = sealbox.spawn("rdp", name, "--json", *extra)
        assert self.proc.stdout is not None
        ready = select.select([self.proc.stdout], [], [], 90)[0]
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"sealbox rdp printed nothing: {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.info: dict[str, Any] = json.loads(line)

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def tunnel(sealbox: Sealbox, desk: str) -> Iterator[Tunnel]:
    t = Tunnel(sealbox, desk)
    yield t
    if t.proc.poll() is None:
        t.interrupt()


def guest_cert_fingerprint(sealbox: Sealbox, name: str, tmp_path: Path) -> str:
    """The oracle for what `sealbox rdp` printed: the certificate read with `sealbox exec`, hashed by openssl."""
    pem = sealbox.exec(name, "cat", "/run/sealbox/xrdp/cert.pem")
    assert pem.returncode == 0, pem.stderr
    (tmp_path / "guest-cert.pem").write_text(pem.stdout)
    out = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "guest-cert.pem"), "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return out.strip().split("=", 1)[1].lower()


def desktop_processes(sealbox: Sealbox, name: str) -> set[str]:
    """Names of the processes the desktop user runs in the guest (read from /proc by the guest's shell)."""
    script = f'for p in /proc/[0-9]*; do [ "$(stat -c %U "$p" 2>/dev/null)" = {USER} ] && read -r c < "$p/comm" && echo "$c"; done; true'
    p = sealbox.exec(name, "sh", "-c", script, timeout=60)
    return set(p.stdout.split()) if p.returncode == 0 else set()


def xrdp_journal(sealbox: Sealbox, name: str) -> str:
    return sealbox.exec(name, "journalctl", "--no-pager", "-o", "cat", "-u", "xrdp", "-u", "xrdp-sesman", timeout=60).stdout


@pytest.fixture
def xvfb(tmp_path: Path) -> Iterator[str]:
    _need("Xvfb")
    r, w = os.pipe()
    with open(tmp_path / "xvfb.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", f"{SIZE[0]}x{SIZE[1]}x24", "-nolisten", "tcp",
                                 "-noreset"], pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=log)
    os.close(w)
    try:
        assert select.select([r], [], [], 30)[0], "Xvfb did not report its display"
        display = ":" + os.read(r, 64).decode().strip()
        yield display
    finally:
        os.close(r)
        end_process(proc)


def xfreerdp(display: str, tmp_path: Path, port: int, password: str, fingerprint: str, log: str) -> subprocess.Popen[bytes]:
    _need("xfreerdp")
    home = tmp_path / "home"  # FreeRDP keeps its own known-hosts store under $HOME: a fresh one, never the user's
    home.mkdir(exist_ok=True)
    argv = ["xfreerdp", f"/v:127.0.0.1:{port}", f"/u:{USER}", f"/p:{password}", f"/cert:deny,fingerprint:sha256:{fingerprint}",
            f"/size:{SIZE[0]}x{SIZE[1]}", "/bpp:24", "/log-level:INFO"]
    with open(tmp_path / log, "wb") as out:
        return subprocess.Popen(argv, env={**os.environ, "DISPLAY": display, "HOME": str(home)}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)


# ---- screenshots: ImageMagick's `import` grabs the X screen; the analysis and the PNG are checked against it -------

def grab(display: str) -> tuple[int, int, bytes]:
    _need("import")
    ppm = subprocess.run(["import", "-display", display, "-window", "root", "-depth", "8", "ppm:-"], capture_output=True,
                         check=True, timeout=60).stdout
    magic, w, h, maxval, data = ppm.split(maxsplit=4)
    assert (magic, maxval) == (b"P6", b"255")
    width, height = int(w), int(h)
    return width, height, data[: width * height * 3]


def colours(data: bytes) -> Counter[bytes]:
    return Counter(data[i:i + 3] for i in range(0, len(data), 3))


def write_png(path: Path, width: int, height: int, rgb: bytes) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    rows = b"".join(b"\0" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def save(path: Path, shot: tuple[int, int, bytes]) -> int:
    """Write the PNG and check it with ImageMagick's identify: same size and number of colours as counted here."""
    write_png(path, *shot)
    got = subprocess.run(["identify", "-format", "%w %h %k", str(path)], capture_output=True, text=True, check=True, timeout=60).stdout
    n = len(colours(shot[2]))
    assert got.split() == [str(shot[0]), str(shot[1]), str(n)], got
    return n


# ---- the tests --------------------------------------------------------------------------------------------------

def test_the_rdp_port_is_reachable_only_through_the_tunnel(sealbox: Sealbox, desk: str, tunnel: Tunnel) -> None:
    rec = sealbox.record(desk)
    assert rec is not None
    netns, guest = rec["network"]["netns"], rec["network"]["guest_ip"]
    # from the sandbox's own network namespace, the closest any host process gets to the guest: SSH answers, RDP not
    connect_in_netns(netns, guest, 22, 10).close()
    with pytest.raises(OSError):
        connect_in_netns(netns, guest, 3389, 5).close()
    # in the guest: xrdp and its session manager listen on loopback only
    ss = sealbox.exec(desk, "ss", "-Htln")
    assert ss.returncode == 0, ss.stderr
    local = [line.split()[3] for line in ss.stdout.splitlines()]
    assert [a for a in local if a.endswith(":3389")] == ["127.0.0.1:3389"], local
    assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in local if a.endswith(":3350")), local
    # on the host: the tunnel's listener is on the host's loopback, nowhere else
    port = tunnel.info["port"]
    assert tunnel.info["address"] == f"127.0.0.1:{port}"
    rows = [line.split() for f in ("/proc/net/tcp", "/proc/net/tcp6") for line in Path(f).read_text().splitlines()[1:]]
    listeners = [r[1] for r in rows if r[3] == "0A" and r[1].endswith(f":{port:04X}")]
    assert listeners == [f"0100007F:{port:04X}"], listeners


def test_xfreerdp_pins_the_certificate_logs_in_and_shows_the_desktop(sealbox: Sealbox, desk: str, tunnel: Tunnel,
                                                                    xvfb: str, tmp_path: Path) -> None:
    info = tunnel.info
    assert info["user"] == USER and len(info["password"]) == 24
    assert info["fingerprint_sha256"] == guest_cert_fingerprint(sealbox, desk, tmp_path)

    # 1. a certificate other than the one `sealbox rdp` showed: the client refuses it, no login is attempted
    wrong_fp = ":".join(["00"] * 32)
    p = xfreerdp(xvfb, tmp_path, info["port"], info["password"], wrong_fp, "xfreerdp-wrong-cert.log")
    try:
        p.wait(60)
    finally:
        end_process(p)
    log = (tmp_path / "xfreerdp-wrong-cert.log").read_text(errors="replace")
    assert p.returncode != 0 and "ERRCONNECT_TLS_CONNECT_FAILED" in log, log[-2000:]
    assert "login successful" not in xrdp_journal(sealbox, desk)

    # 2. the right certificate, a wrong password: PAM in the guest refuses it and no session starts
    p = xfreerdp(xvfb, tmp_path, info["port"], "not-" + info["password"], info["fingerprint_sha256"], "xfreerdp-wrong-password.log")
    try:
        wait_for(lambda: f"AUTHFAIL: user={USER}" in xrdp_journal(sealbox, desk), 180, "xrdp to refuse the wrong password", 3)
        login_box = grab(xvfb)
        save(tmp_path / "login-refused.png", login_box)
    finally:
        end_process(p)
    assert "login successful" not in xrdp_journal(sealbox, desk)
    assert "xfce4-session" not in desktop_processes(sealbox, desk)

    # 3. the password and fingerprint `sealbox rdp` printed: logged in, XFCE starts, the screen shows it
    t0 = time.monotonic()
    p = xfreerdp(xvfb, tmp_path, info["port"], info["password"], info["fingerprint_sha256"], "xfreerdp.log")
    try:
        wait_for(lambda: {"xfce4-session", "xfwm4", "xfce4-panel", "xfdesktop"} <= desktop_processes(sealbox, desk), 300,
                 "the XFCE session of the desktop user", 2)
        TIMES["login_to_desktop_processes_s"] = round(time.monotonic() - t0, 1)
        previous = None  # the screen is drawn once it stops changing (panel and icons appear over a few seconds)
        for _ in range(30):
            shot = grab(xvfb)
            if shot == previous:
                break
            previous = shot
            time.sleep(3)
        TIMES["login_to_settled_screen_s"] = round(time.monotonic() - t0, 1)
        assert p.poll() is None, (tmp_path / "xfreerdp.log").read_text(errors="replace")[-2000:]
    finally:
        end_process(p)
    n = save(tmp_path / "desktop.png", shot)
    top = colours(shot[2]).most_common(1)[0][1] / (len(shot[2]) // 3)
    assert shot[:2] == SIZE and n >= 500 and top < 0.97, (n, top)  # not blank: a picture, not one colour
    assert shot[2] != login_box[2]  # and not the login box of step 2
    assert f"login successful for user {USER}" in xrdp_journal(sealbox, desk)
    TIMES["desktop_colours"] = n


def test_ctrl_c_closes_the_tunnel(sealbox: Sealbox, desk: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = Tunnel(sealbox, desk, "--port", str(port))
    assert t.info["port"] == port
    ssh_pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
                and f"127.0.0.1:{port}:127.0.0.1:3389".encode() in _cmdline(d)]
    assert ssh_pids, "no ssh -L process for the tunnel"
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass  # it accepts on the host's loopback
    rc, err = t.interrupt()
    assert rc == 0 and f"RDP tunnel to {desk} closed" in err, err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert not [pid for pid in ssh_pids if Path(f"/proc/{pid}").exists()], "ssh outlived sealbox rdp"


def _cmdline(d: Path) -> bytes:
    try:
        return (d / "cmdline").read_bytes()
    except OSError:
        return b""
