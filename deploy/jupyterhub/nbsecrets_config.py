"""nbsecrets on a JupyterHub: load this from jupyterhub_config.py.

    load_subconfig('/usr/share/nbsecrets/jupyterhub/nbsecrets_config.py')

With no other setting it works on one machine: the secrets service runs as a
hub-managed service (its embedded NATS server on loopback), reachable at
/services/nbsecrets/ behind the hub's login, and every user's server is
started by `nbsecrets agent --exec -- <the server command>`, which runs the
workspace's agent beside it (LocalProcessSpawner and
SimpleLocalProcessSpawner). Environment variables read here:

    NBSECRETS              the nbsecrets binary (default: `nbsecrets` on PATH)
    NBSECRETS_STATE_DIR    the service's keys and JetStream store (/var/lib/nbsecrets)
    NBSECRETS_NATS_URL     an existing NATS server (2.10+, JetStream) instead of the
                           embedded one, configured with what
                           `nbsecrets nats-config --hub --state-dir $NBSECRETS_STATE_DIR`
                           prints (the service connects with that key and
                           authorises every agent by auth callout)
    NBSECRETS_AGENT_NATS_EXPIRY  with NBSECRETS_NATS_URL: how long an agent's
                           NATS credentials last (10m); a stopped server's
                           agent is cut off when they expire
    NBSECRETS_PORT         the service's loopback port (default: a free one)
    NBSECRETS_GROUP_PREFIX only hub groups starting with it are projects
    NBSECRETS_COMMUNITIES_FILE  the communities file (see README)
    NBSECRETS_SERVER_CMD   the server command the agent runs (jupyterhub-singleuser);
                           this fragment sets c.Spawner.cmd, so set it here, not there
    NBSECRETS_GRANT_USERS  "1" (default) defines the "user" role as self plus
                           the service; "0" if you define that role yourself
    NBSECRETS_SPAWNER_MODE "wrap" (default: local spawners) or "none": the
                           Kubernetes seam, where the deployment adds the agent
                           as a sidecar instead of wrapping the command

Users are granted access:services!service=nbsecrets and nothing more; the
service's own role lets it read users, groups and servers. The fragment makes
$NBSECRETS_STATE_DIR/keys/hub-server-proof.key (0600) at the hub's start: the
key of the server proofs that tell a user's servers apart (see
controlplane/hub's package doc).
"""

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import socket

c = get_config()  # noqa: F821 (defined by load_subconfig)

NBSECRETS = os.environ.get("NBSECRETS") or shutil.which("nbsecrets") or "nbsecrets"
STATE_DIR = os.environ.get("NBSECRETS_STATE_DIR", "/var/lib/nbsecrets")
SERVICE_NAME = "nbsecrets"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = int(os.environ.get("NBSECRETS_PORT") or 0) or _free_port()
SERVICE_URL = "http://127.0.0.1:%d" % PORT

_service_env = {"NBSECRETS_STATE_DIR": STATE_DIR}
for _name in (
    "NBSECRETS_NATS_URL",
    "NBSECRETS_NATS_CREDS",
    "NBSECRETS_NATS_NKEY",
    "NBSECRETS_AGENT_NATS_EXPIRY",
    "NBSECRETS_GROUP_PREFIX",
    "NBSECRETS_COMMUNITIES_FILE",
    "NBSECRETS_LOG_LEVEL",
):
    if os.environ.get(_name):
        _service_env[_name] = os.environ[_name]
if os.environ.get("NBSECRETS_NATS_CREDS"):
    _service_env["NATS_CREDS"] = os.environ["NBSECRETS_NATS_CREDS"]
if os.environ.get("NBSECRETS_NATS_NKEY"):
    _service_env["NATS_NKEY"] = os.environ["NBSECRETS_NATS_NKEY"]

# Server proofs. A JupyterHub 3 server token reaches all of its user's
# servers, so the hub's word on it says "alice", not "alice's server foo".
# The hub process hands each server, with its token, an HMAC of its user,
# its name and its token under a key only the hub and the service hold; the
# agent registers with both, and the service checks both. (JupyterHub 4+
# binds server tokens to their server: the service reads that from the
# token's scopes and the proof is checked as well.)
PROOF_KEY_FILE = os.path.join(STATE_DIR, "keys", "hub-server-proof.key")


def _proof_key():
    os.makedirs(os.path.dirname(PROOF_KEY_FILE), mode=0o700, exist_ok=True)
    try:
        fd = os.open(PROOF_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    with open(PROOF_KEY_FILE) as f:
        return bytes.fromhex(f.read().strip())


_PROOF_KEY = _proof_key()


def _server_proof(key, user, server, token):
    """controlplane/hub.ServerProof, byte for byte."""
    msg = b"".join(
        part.encode() + b"\0" for part in ("nbsecrets-server-proof-v1", user, server)
    ) + hashlib.sha256(token.encode()).hexdigest().encode()
    mac = hmac.new(key, msg, hashlib.sha256).digest()
    return "v1." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _spawner_proof(spawner):
    return _server_proof(_PROOF_KEY, spawner.user.name, spawner.name or "", spawner.api_token or "")


_service_env["NBSECRETS_SERVER_PROOF_KEY_FILE"] = PROOF_KEY_FILE



# load_subconfig runs this file on a config of its own and merges it into
# the hub's: appends and updates (LazyConfigValue) add to your settings,
# plain assignments replace them.
c.JupyterHub.services.append(
    {
        "name": SERVICE_NAME,
        "url": SERVICE_URL,
        "command": [NBSECRETS, "hub-service"],
        "environment": _service_env,
        "oauth_no_confirm": True,
        "display": True,
    }
)

# The service reads who exists; users may reach the service and nothing more.
c.JupyterHub.load_roles.append(
    {
        "name": "nbsecrets-service",
        "description": "nbsecrets: read users, their groups and servers",
        "scopes": ["list:users", "read:users", "read:servers", "list:groups", "read:groups"],
        "services": [SERVICE_NAME],
    }
)
if os.environ.get("NBSECRETS_GRANT_USERS", "1") == "1":
    # The default "user" role, plus the service. A hub that defines its own
    # "user" role sets NBSECRETS_GRANT_USERS=0 and adds the scope there.
    c.JupyterHub.load_roles.append(
        {"name": "user", "scopes": ["self", "access:services!service=" + SERVICE_NAME]}
    )

# Every user's server runs with its workspace's agent.
if os.environ.get("NBSECRETS_SPAWNER_MODE", "wrap") == "wrap":
    c.Spawner.cmd = [NBSECRETS, "agent", "--exec", "--"] + os.environ.get(
        "NBSECRETS_SERVER_CMD", "jupyterhub-singleuser"
    ).split()
    c.Spawner.environment.update(
        {"NBSECRETS_SERVICE_URL": SERVICE_URL + "/services/" + SERVICE_NAME + "/"}
    )
# Every server gets its proof (also the Kubernetes seam: the sidecar agent
# reads it from the pod's environment). Spawner.environment calls a
# callable value with the spawner, after the hub has made its token.
c.Spawner.environment.update({"NBSECRETS_SERVER_PROOF": _spawner_proof})
