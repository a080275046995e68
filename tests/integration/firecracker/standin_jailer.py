"""STAND-IN for Firecracker's jailer + firecracker (NOT the real programs), for tests on hosts without them.

It follows the documented behaviour sealbox depends on (docs/jailer.md, v1.16.1): parse the documented
flags, build <base>/<exec_name>/<id>/root, create and fill the cgroups, fork the "firecracker" child,
write <exec_name>.pid (create_new), exit 0; the child chroots, drops to uid/gid, prints to its stdout
(the console) and serves a minimal API on --api-sock (GET /, PUT /actions; SendCtrlAltDel exits).
Behaviour switches come from behaviour.json next to this file; some make the "firecracker" child act
as a compromised VMM would inside its jail (plant_pid, plant_log_and_die).
"""

import json
import os
import re
import shutil
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import UnixStreamServer

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    behaviour = json.loads(Path(HERE, "behaviour.json").read_text()) if os.path.exists(os.path.join(HERE, "behaviour.json")) else {}
    argv = sys.argv[1:]
    sep = argv.index("--") if "--" in argv else len(argv)
    jargs, fargs = argv[:sep], argv[sep + 1:]
    opts: dict = {"cgroup": [], "resource-limit": []}
    i = 0
    while i < len(jargs):
        flag = jargs[i][2:]
        if flag in ("daemonize", "new-pid-ns"):
            opts[flag] = True
            i += 1
            continue
        if flag not in ("id", "exec-file", "uid", "gid", "cgroup-version", "cgroup", "parent-cgroup", "chroot-base-dir", "netns", "resource-limit"):
            print(f"Failed to parse arguments: Found argument '{jargs[i]}' which wasn't expected", file=sys.stderr)
            return 1
        if isinstance(opts.get(flag), list):
            opts[flag].append(jargs[i + 1])
        else:
            opts[flag] = jargs[i + 1]
        i += 2
    if behaviour.get("fail"):
        print(behaviour["fail"], file=sys.stderr)
        return 1
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", opts["id"]):
        print("Invalid instance ID", file=sys.stderr)
        return 1
    exec_file = os.path.realpath(opts["exec-file"])
    exec_name = os.path.basename(exec_file)
    uid, gid = int(opts["uid"]), int(opts["gid"])
    if opts.get("netns"):
        open(opts["netns"]).close()
    root = os.path.join(os.path.realpath(opts.get("chroot-base-dir", "/srv/jailer")), exec_name, opts["id"], "root")
    os.makedirs(root, exist_ok=True)
    shutil.copy(exec_file, os.path.join(root, exec_name))
    cg_dirs = []
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    for cg in opts["cgroup"]:
        file, value = cg.split("=")
        controller = file.split(".")[0]
        if opts.get("cgroup-version", "1") == "2":
            base = next(m[1] for m in mounts if m[2] == "cgroup2")
        else:
            base = next(m[1] for m in mounts if m[2] == "cgroup" and controller in m[3].split(","))
        d = os.path.join(base, opts.get("parent-cgroup", exec_name), opts["id"])  # as the jailer: --parent-cgroup
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, file), "w") as f:
            f.write(value + "\n")
        cg_dirs.append(d)
    for sub in ("", "dev", "run"):
        p = os.path.join(root, sub)
        os.makedirs(p, exist_ok=True)
        os.chown(p, uid, gid)
        os.chmod(p, 0o700)
    api_sock = fargs[fargs.index("--api-sock") + 1] if "--api-sock" in fargs else "/run/firecracker.socket"
    for d in cg_dirs:  # like the jailer: join the cgroups first, so the child is in them from birth
        with open(os.path.join(d, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    planted_r, planted_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(planted_w)
        fd = os.open(os.path.join(root, exec_name + ".pid"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, str(pid).encode())
        os.close(fd)
        if behaviour.get("plant_pid"):  # let the hostile child win its race against sealbox's read
            import select

            select.select([planted_r], [], [], 5)
        return 0
    os.close(planted_r)
    import traceback  # noqa: F401 - socketserver's handle_error imports it, and the jail has no stdlib to find it in

    os.chroot(root)
    os.chdir("/")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if behaviour.get("plant_pid"):  # hostile: the pid file names another process
        pid_file = "/" + exec_name + ".pid"
        for _ in range(500):
            if os.path.exists(pid_file):
                break
            time.sleep(0.01)
        os.unlink(pid_file)  # the jail root is ours, so is any name in it
        with open(pid_file, "w") as f:
            f.write(str(behaviour["plant_pid"]))
        os.write(planted_w, b"x")
    if behaviour.get("plant_log_and_die"):  # hostile: the log sealbox reads on failure points at a host file
        os.unlink("/firecracker.log")
        os.symlink(behaviour["plant_log_and_die"], "/firecracker.log")
        os._exit(1)
    print(f"stand-in console: firecracker {opts['id']} booted with {' '.join(fargs)}", flush=True)
    if behaviour.get("no_socket"):
        time.sleep(60)
        return 0

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _reply(self, status, body=None):
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:  # a client that read a bodiless reply may have closed: writing b"" then is EPIPE
                self.wfile.write(data)

        def do_GET(self):
            self._reply(200, {"app_name": "Firecracker", "id": opts["id"], "state": "Running", "vmm_version": "1.16.1"})

        def do_PUT(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            print(f"stand-in console: PUT {self.path} {json.dumps(body, sort_keys=True)}", flush=True)
            try:
                self._reply(204)
            finally:  # as Firecracker: the guest reboots whether or not the client stayed for the answer
                if body.get("action_type") == "SendCtrlAltDel" and not behaviour.get("ignore_ctrl_alt_del"):
                    print("stand-in console: reboot: Restarting system", flush=True)
                    os._exit(0)

    class Server(UnixStreamServer):
        def get_request(self):
            req, _ = super().get_request()
            return req, ("local", 0)

    Server(api_sock, Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
