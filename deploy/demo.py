#!/usr/bin/python3
"""make demo: a secret changing live in a real Jupyter kernel.

Starts `nbsecrets dev` in a temporary state dir (embedded NATS with
JetStream, the secrets service, one workspace and its agent), starts a real
ipykernel the way Jupyter does (jupyter_client's KernelManager through the
kernelspec that nbsecrets wrapped), and walks through create, update while a
cell runs, delete and restart. Every value shown is made up for the demo.
It ends by itself and leaves nothing running.
"""
import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    from jupyter_client.manager import KernelManager
except ImportError:
    sys.exit("demo: jupyter_client is missing; run 'make deps' (Debian: python3-jupyter-client python3-ipykernel)")

BOLD, DIM, GREEN, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[0m") if sys.stdout.isatty() else ("",) * 4


def step(n, text):
    print(f"\n{BOLD}{n}. {text}{RESET}", flush=True)


def say(text):
    print(f"   {text}", flush=True)


class Demo:
    def __init__(self, nbsecrets):
        self.bin = os.path.abspath(nbsecrets)
        self.tmp = tempfile.mkdtemp(prefix="nbsecrets-demo-")
        self.env = dict(os.environ)
        # The instance's state dir: $XDG_STATE_HOME/nbsecrets, which every
        # nbsecrets command finds by default.
        self.env["XDG_STATE_HOME"] = os.path.join(self.tmp, "state")
        # Keep the demo away from the user's own Jupyter files.
        self.env["JUPYTER_DATA_DIR"] = os.path.join(self.tmp, "jupyter")
        self.env["JUPYTER_RUNTIME_DIR"] = os.path.join(self.tmp, "jupyter", "runtime")
        self.env["JUPYTER_CONFIG_DIR"] = os.path.join(self.tmp, "jupyter-config")
        self.env["NBSECRETS_LOG_LEVEL"] = "warn"
        self.env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # quiets ipykernel's debugger notice
        self.dev = None
        self.km = None
        self.kc = None

    def nb(self, *args, stdin=None):
        r = subprocess.run([self.bin, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=30)
        if r.returncode != 0:
            raise SystemExit(f"demo: nbsecrets {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def start_dev(self):
        self.dev = subprocess.Popen([self.bin, "dev"], env=self.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        lines = []
        while time.time() < deadline:
            line = self.dev.stdout.readline()
            if not line:
                raise SystemExit("demo: nbsecrets dev exited:\n" + self.dev.stderr.read())
            lines.append(line.rstrip())
            if line.startswith("Try:"):
                break
        for l in lines[:-1]:
            if l.strip():
                say(DIM + l + RESET)

    def start_kernel(self):
        os.environ.update({k: self.env[k] for k in ("JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR")})
        self.km = KernelManager(kernel_name="python3")
        say("kernelspec argv: " + DIM + " ".join(self.km.kernel_spec.argv) + RESET)
        self.km.start_kernel(env=self.env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def cell(self, code, show=True, timeout=60):
        """Runs a cell; prints its output as it streams; returns stdout."""
        if show:
            for i, line in enumerate(code.splitlines()):
                print(f"   {GREEN}{'In [ ]:' if i == 0 else '       '}{RESET} {line}")
        out = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                text = msg["content"]["text"]
                out.append(text)
                if show:
                    for l in text.splitlines():
                        print(f"   {DIM}Out:{RESET}    {l}", flush=True)
            elif msg["msg_type"] == "error":
                raise SystemExit("demo: cell failed: " + msg["content"]["ename"])
        self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        return "".join(out)

    def wait_visible(self, code, expect, timeout=10):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.cell(code, show=False).strip() == expect:
                return time.time() - t0
        raise SystemExit(f"demo: the kernel did not see the change within {timeout}s")

    def run(self):
        step(1, "Start nbsecrets dev: embedded NATS + JetStream, the secrets service, your workspace and its agent")
        self.start_dev()

        step(2, "Start a real Python kernel the way Jupyter does, through the kernelspec nbsecrets wrapped")
        self.start_kernel()
        self.cell("import os\nanswer = 42   # some kernel state we want to keep\nprint('DEMO_TOKEN' in os.environ)")

        step(3, "Create a secret at the command line (the value comes from stdin, never argv)")
        say("$ printf %s demo-value-1 | nbsecrets secret create DEMO_TOKEN")
        t0 = time.time()
        self.nb("secret", "create", "DEMO_TOKEN", stdin="demo-value-1")
        took = self.wait_visible("import os; print(os.environ.get('DEMO_TOKEN'))", "demo-value-1")
        say(f"visible in the running kernel after {(time.time() - t0) * 1000:.0f} ms (CLI start included), no restart:")
        self.cell("os.environ['DEMO_TOKEN']  # what a notebook does\nprint(os.environ['DEMO_TOKEN'])")
        self.cell("!printenv DEMO_TOKEN")

        step(4, "Update it while a cell is running: the running cell sees the new value")
        q = queue.Queue()
        code = ("import time\nlast = None\nfor i in range(40):\n"
                "    v = os.environ.get('DEMO_TOKEN')\n"
                "    if v != last:\n        print(f'{time.strftime(\"%H:%M:%S\")}  DEMO_TOKEN = {v}', flush=True)\n        last = v\n"
                "    if v == 'demo-value-2':\n        break\n    time.sleep(0.1)")
        for i, line in enumerate(code.splitlines()):
            print(f"   {GREEN}{'In [ ]:' if i == 0 else '       '}{RESET} {line}")
        cell_id = self.kc.execute(code)

        def later():
            time.sleep(1.0)
            say("$ printf %s demo-value-2 | nbsecrets secret update DEMO_TOKEN   (while the cell runs)")
            self.nb("secret", "update", "DEMO_TOKEN", stdin="demo-value-2")
        import threading
        th = threading.Thread(target=later)
        th.start()
        while True:
            msg = self.kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "stream":
                for l in msg["content"]["text"].splitlines():
                    print(f"   {DIM}Out:{RESET}    {l}", flush=True)
            # Only this cell's idle: the agent's re-seed is an execute_request too.
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" \
                    and msg["parent_header"].get("msg_id") == cell_id:
                break
        th.join()
        while self.kc.get_shell_msg(timeout=10)["parent_header"].get("msg_id") != cell_id:
            pass
        self.cell("print('state kept: answer =', answer)")

        step(5, "Delete it: every kernel that had it loses it")
        say("$ nbsecrets secret delete DEMO_TOKEN")
        say(self.nb("secret", "delete", "DEMO_TOKEN"))
        self.wait_visible("import os; print(os.environ.get('DEMO_TOKEN'))", "None")
        self.cell("print(os.environ.get('DEMO_TOKEN'))\n!printenv DEMO_TOKEN || echo 'printenv: not set'")

        step(6, "Restart the kernel: it starts with the current values (the injector asks the agent)")
        self.nb("secret", "create", "DB_PASSWORD", stdin="demo-db-password")
        say("$ printf %s demo-db-password | nbsecrets secret create DB_PASSWORD")
        self.wait_visible("import os; print(os.environ.get('DB_PASSWORD'))", "demo-db-password")
        say("restarting the kernel (jupyter_client re-runs the kernelspec argv, so the injector runs again)")
        self.km.restart_kernel(now=False)
        self.kc.wait_for_ready(timeout=60)
        self.cell("import os\nprint(os.environ.get('DB_PASSWORD'), os.environ.get('DEMO_TOKEN'))\nprint('answer' in globals())  # a restart loses state: why live updates matter")

        step(7, "What the agent holds (never a value)")
        say("$ nbsecrets status")
        for l in self.nb("status").splitlines():
            say(DIM + l + RESET)

    def close(self):
        if self.kc:
            self.kc.stop_channels()
        if self.km and self.km.has_kernel:
            self.km.shutdown_kernel(now=True)
        if self.dev and self.dev.poll() is None:
            self.dev.send_signal(signal.SIGINT)
            try:
                self.dev.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.dev.kill()
                self.dev.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nbsecrets", default="bin/nbsecrets")
    args = ap.parse_args()
    d = Demo(args.nbsecrets)
    try:
        d.run()
        print(f"\n{BOLD}Done.{RESET} The kernel saw every change live, kept its state, and started with current values.")
    finally:
        d.close()


if __name__ == "__main__":
    main()
