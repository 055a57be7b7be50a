"""Tests of nbsecrets.py against a fake nbsecrets HTTP API (stdlib only).

Run: python3 -m unittest discover -s deploy/python
"""

import http.server
import io
import json
import os
import threading
import unittest
from unittest import mock

import nbsecrets

TOKEN = "server-token-of-alice"
CSRF = "csrf-of-alice"


class FakeService(http.server.BaseHTTPRequestHandler):
    secrets = {}
    seen = []

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authed(self, change):
        if self.headers.get("Authorization") != "token " + TOKEN:
            self.reply(401, {"error": {"code": "unauthenticated", "message": "not logged in"}})
            return False
        if change and self.headers.get("X-CSRF-Token") != CSRF:
            self.reply(403, {"error": {"code": "csrf", "message": "missing or wrong CSRF token"}})
            return False
        return True

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        self.seen.append(("GET", self.path))
        if not self.authed(False):
            return
        if self.path == "/svc/api/v1/me":
            return self.reply(200, {"user": "alice", "projects": ["ml"], "csrf_token": CSRF})
        if self.path == "/svc/api/v1/secrets":
            return self.reply(200, {"secrets": [{k: v for k, v in s.items() if k != "value"} for s in self.secrets.values()]})
        self.reply(404, {"error": {"code": "not_found", "message": "no route"}})

    def do_POST(self):
        self.seen.append(("POST", self.path))
        if not self.authed(True):
            return
        b = self.body()
        if b["name"] in self.secrets:
            return self.reply(409, {"error": {"code": "exists", "message": "exists"}})
        scope = {"kind": "project", "id": b["project"]} if b.get("project") else {"kind": "user", "id": "alice"}
        s = {"id": "id-" + b["name"], "name": b["name"], "scope": scope, "version": 1, "value": b["value"]}
        self.secrets[b["name"]] = s
        os.environ[b["name"]] = b["value"]  # as the agent would, live
        self.reply(201, {"secret": {k: v for k, v in s.items() if k != "value"}})

    def do_PATCH(self):
        self.seen.append(("PATCH", self.path))
        if not self.authed(True):
            return
        b = self.body()
        for s in self.secrets.values():
            if self.path.endswith("/" + s["id"]):
                s["version"] += 1
                if "value" in b:
                    s["value"] = b["value"]
                return self.reply(200, {"secret": {k: v for k, v in s.items() if k != "value"}})
        self.reply(404, {"error": {"code": "not_found", "message": "no secret"}})

    def do_DELETE(self):
        self.seen.append(("DELETE", self.path))
        if not self.authed(True):
            return
        for name, s in list(self.secrets.items()):
            if self.path.endswith("/" + s["id"]):
                del self.secrets[name]
                os.environ.pop(name, None)
                return self.reply(200, {"secret": {"id": s["id"], "name": name}})
        self.reply(404, {"error": {"code": "not_found", "message": "no secret"}})


class NbsecretsTest(unittest.TestCase):
    def setUp(self):
        FakeService.secrets, FakeService.seen = {}, []
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        env = {"JUPYTERHUB_API_TOKEN": TOKEN, "NBSECRETS_SERVICE_URL": "http://127.0.0.1:%d/svc/" % self.srv.server_address[1]}
        self.env = mock.patch.dict(os.environ, env)
        self.env.start()
        nbsecrets._service_url, nbsecrets._csrf = None, {}

    def tearDown(self):
        self.env.stop()
        self.srv.shutdown()
        self.srv.server_close()
        for name in ("DB_PASSWORD", "ML_TOKEN"):
            os.environ.pop(name, None)

    def test_create_list_update_delete(self):
        s = nbsecrets.create_secret("ML_TOKEN", "v1", project="ml")
        self.assertEqual(s["scope"], {"kind": "project", "id": "ml"})
        self.assertNotIn("value", s)
        self.assertEqual([x["name"] for x in nbsecrets.get_secrets()], ["ML_TOKEN"])
        self.assertEqual(nbsecrets.get_secret("ML_TOKEN")["version"], 1)
        self.assertIsNone(nbsecrets.get_secret("NOPE"))
        self.assertEqual(nbsecrets.update_secret("ML_TOKEN", value="v2")["version"], 2)
        nbsecrets.delete_secret("ML_TOKEN")
        self.assertIsNone(nbsecrets.get_secret("ML_TOKEN"))
        # The CSRF token is fetched once, with GET api/v1/me.
        self.assertEqual(FakeService.seen.count(("GET", "/svc/api/v1/me")), 1)

    def test_get_prompts_without_echo_and_creates(self):
        with mock.patch("getpass.getpass", return_value="typed-value") as gp:
            self.assertEqual(nbsecrets.get("DB_PASSWORD"), "typed-value")
        gp.assert_called_once()
        self.assertIn("DB_PASSWORD", gp.call_args[0][0])
        self.assertEqual(nbsecrets.get_secret("DB_PASSWORD")["scope"]["kind"], "user")
        with mock.patch("getpass.getpass") as gp:
            self.assertEqual(nbsecrets.get("DB_PASSWORD"), "typed-value")
        gp.assert_not_called()

    def test_errors_name_the_code_never_the_value(self):
        nbsecrets.create_secret("ML_TOKEN", "secret-value-1")
        with self.assertRaises(nbsecrets.NbsecretsError) as e:
            nbsecrets.create_secret("ML_TOKEN", "secret-value-2")
        self.assertEqual(e.exception.code, "exists")
        self.assertNotIn("secret-value", str(e.exception))
        with self.assertRaises(nbsecrets.NbsecretsError) as e:
            nbsecrets.delete_secret("NOPE")
        self.assertEqual(e.exception.code, "not_found")
        with mock.patch.dict(os.environ, {"JUPYTERHUB_API_TOKEN": "forged"}):
            nbsecrets._csrf = {}
            with self.assertRaises(nbsecrets.NbsecretsError) as e:
                nbsecrets.get_secrets()
            self.assertEqual(e.exception.code, "unauthenticated")
        with mock.patch.dict(os.environ, {}, clear=True):
            with self.assertRaises(nbsecrets.NbsecretsError):
                nbsecrets.get_secrets()
        with self.assertRaises(TypeError):
            nbsecrets.create_secret("X_BYTES", b"bytes")


if __name__ == "__main__":
    unittest.main()
