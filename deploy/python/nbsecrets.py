"""nbsecrets from notebook code: create, list, change and read secrets.

A small client of the nbsecrets HTTP API for kernels on a JupyterHub, with
the standard library only. It authenticates with the server's own
$JUPYTERHUB_API_TOKEN (the hub tells the service whose it is) and finds the
service through $NBSECRETS_SERVICE_URL, which nbsecrets_config.py gives
every server, else by asking the hub ($JUPYTERHUB_API_URL) for the
service's URL.

    import nbsecrets
    nbsecrets.create_secret("DB_PASSWORD", value)          # private
    nbsecrets.create_secret("ML_TOKEN", value, project="ml")
    nbsecrets.get_secrets()                                 # metadata, never values
    nbsecrets.get_secret("ML_TOKEN")                        # metadata or None
    nbsecrets.update_secret("ML_TOKEN", value=new_value)    # or new_name=...
    nbsecrets.delete_secret("ML_TOKEN")
    password = nbsecrets.get("DB_PASSWORD")                 # prompts (getpass) if missing

Values go only in request bodies; no reply carries one. A value reaches the
kernel as an environment variable, pushed live by the workspace's agent:
get() reads os.environ, waiting briefly for a value just created.

Install into the kernel's Python: copy this file into its site-packages
(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'),
or put its directory on the kernel's PYTHONPATH (c.Spawner.environment).
"""

import getpass as _getpass
import json as _json
import os as _os
import time as _time
import urllib.error as _urlerror
import urllib.parse as _urlparse
import urllib.request as _urlrequest

__all__ = [
    "NbsecretsError",
    "create_secret",
    "get_secrets",
    "get_secret",
    "update_secret",
    "delete_secret",
    "get",
]

SERVICE_NAME = "nbsecrets"
TIMEOUT = 30  # seconds per request


class NbsecretsError(Exception):
    """A refusal from the service: code is its stable error code
    ("not_found", "forbidden", "invalid_name", "exists", ...)."""

    def __init__(self, code, message, status=None):
        super().__init__("%s: %s" % (code, message))
        self.code, self.message, self.status = code, message, status


def _token():
    token = _os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        raise NbsecretsError("unauthenticated", "$JUPYTERHUB_API_TOKEN is not set: run this in a JupyterHub server's kernel")
    return token


def _request(method, url, token, body=None, headers=None):
    data = None if body is None else _json.dumps(body).encode()
    req = _urlrequest.Request(url, data=data, method=method)
    req.add_header("Authorization", "token " + token)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with _urlrequest.urlopen(req, timeout=TIMEOUT) as resp:
            raw = resp.read()
    except _urlerror.HTTPError as e:
        raw = e.read()
        try:
            err = _json.loads(raw)["error"]
            raise NbsecretsError(err.get("code", "error"), err.get("message", ""), e.code) from None
        except (ValueError, KeyError, TypeError):
            raise NbsecretsError("http", "%s %s: HTTP %d" % (method, url, e.code), e.code) from None
    except _urlerror.URLError as e:
        raise NbsecretsError("unavailable", "cannot reach %s: %s" % (url, e.reason)) from None
    return _json.loads(raw) if raw else None


_service_url = None
_csrf = {}


def _base():
    """The service's URL, ending in /."""
    global _service_url
    if _service_url:
        return _service_url
    url = _os.environ.get("NBSECRETS_SERVICE_URL")
    if not url:
        hub = _os.environ.get("JUPYTERHUB_API_URL")
        if not hub:
            raise NbsecretsError("unavailable", "neither $NBSECRETS_SERVICE_URL nor $JUPYTERHUB_API_URL is set")
        svc = _request("GET", hub.rstrip("/") + "/services/" + SERVICE_NAME, _token())
        url = svc.get("url") or ""
        if not url:
            raise NbsecretsError("unavailable", "the hub does not say where the %s service is" % SERVICE_NAME)
        url = url.rstrip("/") + (svc.get("prefix") or "/services/%s/" % SERVICE_NAME)
    _service_url = url.rstrip("/") + "/"
    return _service_url


def _api(method, path, body=None):
    token = _token()
    headers = {}
    if method not in ("GET", "HEAD"):
        if token not in _csrf:
            _csrf[token] = _request("GET", _base() + "api/v1/me", token)["csrf_token"]
        headers["X-CSRF-Token"] = _csrf[token]
    return _request(method, _base() + "api/v1/" + path, token, body, headers)


def _check_value(value):
    if not isinstance(value, str):
        raise TypeError("a secret's value is a str")


def get_secrets():
    """Every secret you can see: yours, your projects', and those shared
    with your communities. Metadata only (name, scope, version, ...)."""
    return _api("GET", "secrets")["secrets"]


def get_secret(name, project=None):
    """The metadata of secret name (in project, if given; else your own
    first, then your projects'), or None."""
    found = [s for s in get_secrets() if s["name"] == name]
    if project is not None:
        found = [s for s in found if s["scope"] == {"kind": "project", "id": project}]
    rank = {"user": 0, "project": 1, "community": 2}
    found.sort(key=lambda s: (rank.get(s["scope"]["kind"], 3), bool(s.get("via"))))
    return found[0] if found else None


def _find(name, project):
    s = get_secret(name, project)
    if s is None:
        raise NbsecretsError("not_found", "no secret %r%s among those you can see" % (name, " in project %s" % project if project else ""))
    return s


def create_secret(name, value, project=None):
    """Create secret name with value: private, or in project (a hub group
    you belong to). Returns its metadata."""
    _check_value(value)
    body = {"name": name, "value": value}
    if project:
        body["project"] = project
    return _api("POST", "secrets", body)["secret"]


def update_secret(name, value=None, new_name=None, project=None):
    """Give secret name a new value and/or a new name. Returns its
    metadata."""
    body = {}
    if value is not None:
        _check_value(value)
        body["value"] = value
    if new_name:
        body["name"] = new_name
    s = _find(name, project)
    return _api("PATCH", "secrets/" + _urlparse.quote(s["id"]), body)["secret"]


def delete_secret(name, project=None):
    """Delete secret name: every kernel that has it loses the variable."""
    s = _find(name, project)
    return _api("DELETE", "secrets/" + _urlparse.quote(s["id"]))


def get(name, project=None, wait=10.0):
    """The value of secret name, as this kernel holds it. A secret that
    does not exist yet is asked for with getpass (no echo) and created
    private (or in project), then returned."""
    if name in _os.environ:
        return _os.environ[name]
    typed = None
    if get_secret(name, project) is None:
        typed = _getpass.getpass("Could not find secret %s, enter value here to create it: " % name)
        create_secret(name, typed, project)
    deadline = _time.monotonic() + wait
    while _time.monotonic() < deadline:
        if name in _os.environ:
            return _os.environ[name]
        _time.sleep(0.05)
    if typed is not None:
        return typed
    raise NbsecretsError("not_found", "secret %r exists but has not reached this kernel (is this workspace entitled to it?)" % name)
