"""Jupyter's kernel conformance suite (Debian's python3-jupyter-kernel-test)
against the python3 kernelspec wrapped by `nbsecrets inject`, with the agent
of `nbsecrets dev` serving the kernel while secrets change (TestConformance).

The samples are those of jupyter_kernel_test's own ipykernel test. The
kernel is started by jupyter_client from JUPYTER_DATA_DIR's kernelspec, as
any frontend starts it; setUpClass waits until the agent serves it over the
quiet channel (its status), so that what follows is the agent's quiet traffic, not its first
contact. Environment: NBSECRETS (the binary), NBSECRETS_STATE_DIR,
NBSECRETS_TEST_SECRET (the secret's name), NBSECRETS_SERVED_FILE (written
once the kernel is served).
"""
import json
import os
import subprocess
import time
import unittest

import jupyter_kernel_test


def agent_status():
    out = subprocess.run(
        [os.environ["NBSECRETS"], "status", "--json", "--state-dir", os.environ["NBSECRETS_STATE_DIR"]],
        check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


class WrappedIPyKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = "python3"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        name = os.environ["NBSECRETS_TEST_SECRET"]
        conn = os.path.basename(cls.km.connection_file)
        deadline = time.monotonic() + 60
        while True:
            st = agent_status()
            want = {s["name"]: s["version"] for s in st.get("secrets") or []}.get(name)
            ks = [k for k in st.get("kernels") or [] if os.path.basename(k.get("connection_file", "")) == conn]
            if ks and ks[0]["state"] == "live" and "quiet" in ks[0].get("mode", "") and want and (ks[0].get("holds") or {}).get(name, {}).get("version") == want:
                break
            if time.monotonic() > deadline:
                raise AssertionError("the agent does not serve the suite's kernel %s: %r" % (conn, ks))
            time.sleep(0.1)
        # Marks, for the Go test, that the agent's first contact is over.
        with open(os.environ["NBSECRETS_SERVED_FILE"], "w") as f:
            f.write(conn)

    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"

    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ['print("""hello', "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]

    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    def test_nbsecrets_managed(self):
        """The kernel holds the secret's name among those nbsecrets manages
        (names only: no value is printed)."""
        self.flush_channels()
        reply, outputs = self.execute_helper(code="import os; print(os.environ.get('NBSECRETS_MANAGED', ''))")
        self.assertEqual(reply["content"]["status"], "ok")
        text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        self.assertIn(os.environ["NBSECRETS_TEST_SECRET"], text)


if __name__ == "__main__":
    unittest.main(verbosity=2)
