// Package controlplane is the secrets service, the other side of the
// protocol: it carries out users' operations on secrets (create, update,
// delete, list), enforces who may see what, and writes a signed, sealed
// record for every workspace that may have a secret into JetStream.
//
// # Who sees what
//
// A [Directory] lists users (each with an ed25519 user nkey), projects and
// their members, communities, and workspaces (each with an owner, the
// projects it belongs to and a curve public key). A private secret reaches
// every workspace its owner owns; a project secret reaches every workspace
// that lists the project. Any project member may create a project secret; a
// project admin or the member who created it may update or delete it. A
// name is unique within its scope (user:<id> or project:<id>); when a user
// names a secret, their own wins over a project's, and a name found in two
// of their projects is refused as ambiguous.
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
// secret its metadata and its value sealed to the service's own curve key
// (no value is stored in the clear), and a name index per scope. Changes to
// a secret are read-modify-write with compare-and-set on its revision, so
// concurrent updates (also from several service instances) each get their
// own version and none is lost. On Start the service rewrites any record
// that is behind its store, finishing an operation a crash interrupted.
//
// # API
//
// Requests go over NATS request/reply to SubjectPrefix+op
// ("nbsecrets.api.v1.create", "...update", "...delete", "...list"), in the
// queue group [QueueGroup]. A request is JSON:
//
//	{"v":1,"req":"<base64url of the body JSON>","sig":"<base64url ed25519 signature>"}
//
// The signature is by the user's nkey over "nbsecrets-api-v1\n" followed by
// the exact body bytes. The body:
//
//	{"op":"update","user":"alice","ts":"<RFC 3339>","nonce":"<random>",
//	 "name":"DB_PASSWORD","project":"","epk":"X...","sealed":"<base64>"}
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
