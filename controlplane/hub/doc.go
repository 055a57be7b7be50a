// Package hub makes the secrets service a JupyterHub service: who exists
// comes from the hub ([Source]: users, and a hub group is a project),
// people log in to the web UI with the hub's OAuth and the HTTP API takes
// a hub API token ([OAuth]), and every user's server brings an agent that
// proves whose server it serves with the server's $JUPYTERHUB_API_TOKEN
// and registers the curve key it made at start ([Registrar]).
//
// # Projects, admins, communities
//
// Every hub group is a project (or, with a prefix, every group whose name
// starts with it; the project id is the name without the prefix). A
// project's members are the group's users. Its admins are the users of the
// companion group "<group>-admins" (a group with such a name is then not a
// project of its own) and the hub's admins; an admin who is not in the
// group itself may manage its secrets but does not receive them in
// kernels. JupyterHub 3.0, the one Debian ships, has no group properties,
// hence a companion group rather than a property. Communities have no hub
// equivalent and come from the service's own small file (see
// [LoadCommunities]); entries naming users or projects the hub does not
// have are dropped with a warning.
//
// A hub user name that is not a valid nbsecrets id (1-64 letters, digits,
// "-" and "_") is skipped with a warning. Hub users sign no NATS requests:
// each gets a placeholder signing key whose seed is never kept, so the
// HTTP API (behind the hub's login) is their only door.
//
// # Workspaces
//
// A workspace is one server of one user: "<user>" for the default server,
// "<user>--<server>" for a named one. It exists from its agent's
// registration until the hub no longer lists the server (after a grace
// period for a server still starting). It receives the projects whose
// groups hold its owner.
//
// # Which server an agent serves
//
// An agent registers with its server's $JUPYTERHUB_API_TOKEN and says
// "user alice, server foo". The service asks the hub whose token it is
// (GET /hub/api/user) and refuses a token of anyone but alice. Which of
// alice's servers it is for is proven in one of two ways:
//
//   - JupyterHub 4 and later bind a server's token to its server: the
//     reply's "scopes" hold access:servers!server=alice/foo ("alice/" for
//     the default server). A token whose access:servers scopes all name
//     single servers may register only as one of those.
//   - JupyterHub 3.0 (Debian's) gives server tokens
//     access:servers!user=alice: the hub's word says "alice" and no more,
//     and the token's model (GET /users/alice/tokens) cannot be matched
//     to a token without its value. There the hub process itself vouches:
//     deploy/jupyterhub/nbsecrets_config.py makes a 32-byte key at the
//     hub's start ($NBSECRETS_STATE_DIR/keys/hub-server-proof.key, 0600,
//     read by the hub and the service only) and hands every server, in
//     its environment ($NBSECRETS_SERVER_PROOF), the [ServerProof]: an
//     HMAC of its user, its name and its token under that key. The agent
//     sends it with its registration and keeps it from the server's and
//     the kernels' environment.
//
// A proof that is sent is checked on either hub; a token that no scope
// binds to one server (a 3.0 server token, a user's own API token) with no
// valid proof registers nothing. A proof is bound to its token, which the
// hub deletes when the server stops. The boundary is the spawner's: with
// the local spawners all of a user's servers run as the same system user,
// whose processes can read one another's environment (token and proof
// alike), so alice's servers are told apart against mistakes and against
// another user, not against alice herself; SimpleLocalProcessSpawner
// runs every server as the hub's user and isolates nobody.
//
// An agent registers again every few seconds. An unchanged registration
// (same token, server, keys and proof) rides on the hub's word of less
// than 30s ago and on the directory in force; anything changed is checked
// with the hub at once.
//
// # Following the hub
//
// JupyterHub has no change feed, so the source polls, in two loops. The
// groups are read every 2s (Interval): a group change reaches kernels
// within about that on a small hub. The whole user list (who exists, hub
// admins, running servers) is read every 30s (UsersInterval) in a loop of
// its own, since a large hub takes long to build it (JupyterHub 3.0 with
// 5,000 users: 0.6 to 0.8s, but 18 to 38s for its first read after the
// hub starts; see scale_test.go). Nothing waits for it: a
// user a group names, an agent registers for or the hub vouches for at
// login, whom the last list lacks, is read on their own (GET
// /users/{name}) at once; a user the hub deletes leaves their groups at
// once, so loses projects within the groups poll, and leaves the
// directory at the next users poll.
//
// Lists are read in JupyterHub's pagination envelope, in pages that
// overlap by one item: a list that changed while it was read (the total
// moved, or a page does not start where the last ended) is read again
// rather than miss a user, who would lose every secret for one poll. The
// directory is rebuilt only when what the source reads of the hub
// (hashed) or the registrations changed. A failing hub is polled after
// waits doubling up to a minute; a slow one no sooner than 4 times (the
// users: 10 times) as long as its last answer took, so that the service
// takes a bounded share of a busy hub's time, at the price of slower
// changes on a very large hub. A new directory goes through
// controlplane.Service.SetDirectory, the recomputation of a directory
// file reload: gains get sealed records, losses signed tombstones.
package hub
