// Package controlplane is the secrets service, the other side of the
// protocol: it carries out users' operations on secrets (create, update and
// rename, clone, delete, share and unshare with a community, list),
// enforces who may see and change what, and writes a signed, sealed record
// for every workspace that may have a secret into JetStream.
//
// # The directory
//
// A [Directory] says who exists and who belongs where. Its JSON form, the
// directory file ([LoadDirectory]; example in deploy/directory.example.json):
//
//	{
//	  "users": [                       every person who may call the service
//	    {"id": "alice",                an id: 1-64 letters, digits, "-", "_"
//	     "publicKey": "UA..."}         the user's ed25519 user nkey: requests must be signed by it
//	  ],
//	  "projects": [
//	    {"id": "ml",
//	     "members": [                  who belongs to the project, each once
//	       {"user": "alice", "role": "admin"},   "admin" or "member"
//	       {"user": "bob", "role": "member"}]}
//	  ],
//	  "communities": [
//	    {"id": "research",
//	     "admins": ["alice"],          users who may share secrets with it and withdraw them
//	     "projects": ["ml", "vision"]} projects whose workspaces its shared secrets reach
//	  ],
//	  "workspaces": [                  where kernels run; one agent each
//	    {"id": "ws-alice",
//	     "owner": "alice",             receives the owner's private secrets
//	     "projects": ["ml"],           receives these projects' secrets, and what their communities share
//	     "curveKey": "XA..."}          the workspace's curve public key: records are sealed to it
//	  ]
//	}
//
// Every id is unique within its kind and every reference (member, admin,
// owner, project) must name an entry of the file; unknown fields are
// refused, except "//", a comment, at the top or in a user, project,
// community or workspace. A refused file's error names the field, as in
// "directory: projects[0].members[1].role: ...". [Service.SetDirectory]
// swaps a new directory in while the service runs (nbsecrets serve does on
// SIGHUP and when the file changes) and reconciles every secret with it.
//
// # Who sees what
//
// A private secret (scope user:<id>) reaches every workspace its owner
// owns; a project secret (project:<id>) every workspace that lists the
// project and whose owner is a member of it (a member who leaves a project
// stops receiving its secrets even if their workspace still lists it). A
// secret shared with a community also reaches every workspace that so
// receives one of the community's projects.
//
// Sharing model: a workspace that gets a secret only through a community
// share gets a record whose scope is community:<id>, not the secret's own
// scope; a workspace that gets it by the secret's own scope gets that scope
// (a workspace reached both ways gets the own scope, and one reached
// through several communities gets the first by id). Each agent checks the
// scope of every record against what its workspace may have (its owner,
// its projects, its communities; see agent.Workspace.Allows, and
// [Directory.AccessOf], which gives an agent's --owner, --projects and
// --communities), so a record of another project's secret is refused
// unless it came through one of the workspace's communities. Records of
// one secret may therefore carry different scopes in different workspaces;
// the secret id and version are the same. When a directory change moves a
// workspace from one scope to another, the version goes up so that the
// agent takes the record with the new scope.
//
// When one workspace sees several secrets of one name, the agent decides:
// a private secret wins over a project's, which wins over a community's
// (then the lower secret id); `nbsecrets status` shows the hidden ones and
// `nbsecrets secret list` marks them (ShadowedBy). A private and a project
// secret of one name may coexist; within one scope a name is unique, and a
// community holds one shared secret of a name.
//
// # Who may do what
//
//   - create: private to the caller, or in a project the caller is a member
//     of (any member).
//   - update (new value and/or rename), delete: the owner of a private
//     secret; a project admin or the member who created a project secret.
//     Nobody changes a secret through a community share, even a member of
//     a project that receives it: the secret can be used there, not edited.
//   - clone: any secret the caller can use (own, project, or shared with
//     the caller's communities), into the caller's private scope or a
//     project the caller is a member of; the copy has a new id.
//   - share: an admin of the community who may also change the secret
//     (sharing widens who sees it). unshare: an admin of the community.
//   - list: the caller's own secrets, their projects', and those shared
//     with a community that holds one of their projects or that they
//     administer; names, scopes, versions, who receives them, never a value.
//
// A name is looked up for update, delete and share as the caller's own
// secret first, then the one project secret of that name among the
// caller's projects (two are refused as ambiguous: pick one with
// [InProject]); for unshare as the community sees it. A rename keeps the
// secret's id: each workspace's record changes name at the next version,
// so agents unset the old variable and set the new one.
//
// # State
//
// Two KV buckets, both created when missing. [protocol.Bucket] holds the
// records agents read: on every change the service writes, with
// compare-and-set, a record under "<workspace>.<secret id>" for each
// workspace that ever had the secret, the sealed value for those that may
// see it and a signed tombstone for the others (and for all once deleted;
// JetStream delete markers cannot be signed). A record is never replaced by
// one of a lower version. [ServiceBucket] holds the service's own state: per
// secret its metadata (with its community shares and the workspaces that
// receive it) and its value sealed to the service's own curve key (no value
// is stored in the clear), and a name index per scope. Changes to a secret
// are read-modify-write with compare-and-set on its revision, so
// concurrent updates (also from several service instances) each get their
// own version and none is lost. On Start, and after SetDirectory, the
// service recomputes every secret's workspaces with the directory and
// rewrites any record that is behind its store, finishing an operation a
// crash interrupted.
//
// # API
//
// Requests go over NATS request/reply to SubjectPrefix+op
// ("nbsecrets.api.v1.create", "...update", "...delete", "...list",
// "...clone", "...share", "...unshare"), in the queue group [QueueGroup].
// A request is JSON:
//
//	{"v":1,"req":"<base64url of the body JSON>","sig":"<base64url ed25519 signature>"}
//
// The signature is by the user's nkey over "nbsecrets-api-v1\n" followed by
// the exact body bytes. The body:
//
//	{"op":"update","user":"alice","ts":"<RFC 3339>","nonce":"<random>",
//	 "name":"DB_PASSWORD","project":"","in":"","new_name":"","community":"",
//	 "epk":"X...","sealed":"<base64>"}
//
// The service refuses, as ErrUnauthenticated and without changing anything,
// a request from a user it does not know, with a bad signature, signed for
// another operation than its subject's, with a timestamp more than
// [MaxClockSkew] from its clock, or with a nonce it has already accepted.
// A value travels only as "sealed": a NaCl box from a one-time curve key
// ("epk") to the service's curve key, whose plaintext repeats the user and
// the nonce so that a box cannot be lifted into another request. A reply is
// {"secret":{...}}, {"secrets":[...]} or {"error":{"code":"...","message":"..."}};
// [Client] maps the codes back to this package's errors. Replies never hold
// a value and neither do logs (op, user, name, scope, id, version).
package controlplane
