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
// The agent's token says which user it serves, not which of the user's
// servers (JupyterHub 3.0 server tokens carry access:servers!user): a user
// can only register workspaces of their own, which receive only what the
// user may have anyway.
//
// Changes are polled (every 2s by default) and go through
// controlplane.Service.SetDirectory, the recomputation of a directory file
// reload: gains get sealed records, losses signed tombstones.
package hub
