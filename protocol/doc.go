// Package protocol defines what crosses NATS between the secrets service and
// a workspace agent: signed, sealed secret records, the JetStream layout that
// carries them, and the rules for secret names and values that both sides
// enforce.
//
// # Records
//
// A record is one secret as one workspace receives it. The service seals the
// value to the workspace's curve public key (nkeys Seal: NaCl box, X25519 and
// XSalsa20-Poly1305) with its own curve key, puts workspace, secret id,
// version and the box into a record, and signs the record's bytes with its
// ed25519 nkey. Every agent pins the service's signing key and curve public
// key. A box alone is not a signature (the recipient could make one to
// itself) and carries no associated data, so the sealed plaintext repeats the
// workspace, secret id and version and the agent checks that they match the
// signed record around it.
//
// Deletions are records too (Op "delete", no value): JetStream delete and
// purge markers carry no payload and so cannot be signed. A tombstone keeps
// the secret's name so that an agent that was offline still learns which
// variable to remove.
//
// On the wire a record is JSON:
//
//	{"v":1,"rec":"<base64url of the record JSON>","sig":"<base64url ed25519 signature>"}
//
// The signature covers the domain-separation string "nbsecrets-record-v1\n"
// followed by the exact record bytes, so no canonical JSON form is needed.
// Readers take the envelope, the record and the sealed plaintext only in the
// form the Sealer writes them, encoding/json's: members in the struct's
// order, each once, none null, names exactly as written, no spaces, nothing
// after the object, and base64 only as written (the envelope's strings
// unpadded base64url, a []byte padded standard base64; no padding bits, no
// line breaks), so that a record has one encoding and one meaning. A
// refused record's error names the layer and the fault (parse.go).
//
// A fan-out signs many records at once ([Batch]): their leaves, each
// SHA-256(0x00 || a 16-byte salt || "nbsecrets-record-v1\n" || record),
// form an RFC 6962 Merkle tree, whose root is signed once as
// "nbsecrets-batch-v1\n" || root || leaf count, and each record carries its
// place and its audit path:
//
//	{"v":1,"rec":"…","sig":"<signature of the root>","idx":I,"n":N,"salt":"…","path":["<base64url SHA-256>",…]}
//
// A verifier takes either form; the leaf, node and root prefixes keep a
// leaf, an inner node, a single record's signature and a root's apart
// (batch.go). An agent older than the batch form refuses such records.
//
// A record stays valid once signed, so whoever can write to the bucket can
// put an older record back under its key: an agent applies a record only
// when its Version is newer than the one it holds for that key.
//
// # JetStream layout
//
// All records live in one KV bucket, [Bucket] ("nbsecrets"), under the key
// "<workspace>.<secret id>" (see [RecordKey]). The stream behind the bucket
// is "KV_nbsecrets" and a record's subject is "$KV.nbsecrets.<workspace>.<secret id>".
// One workspace's records are therefore exactly the subjects matched by the
// single filter [WorkspaceFilter] ("$KV.nbsecrets.<workspace>.>"). An agent
// reads them with a consumer of its own ([ConsumerName]), DeliverLastPerSubject,
// that one filter.
// Because it is a single filter subject, a NATS user allowed to create
// consumers only on
//
//	$JS.API.CONSUMER.CREATE.KV_nbsecrets.*.$KV.nbsecrets.<workspace>.>
//
// can read its own workspace's keys and no other (multi-filter consumers
// bypass that check, so agents never use them). That permission alone is
// not enough inside one NATS account: a JetStream API request's reply
// subject can name a record's subject, and the stream stores the response
// there. So each agent and each user gets an account of its own, and only
// the service's account has JetStream, exporting to each workspace's
// account exactly its consumer-create subject (controlplane/natsauth,
// `nbsecrets nats-config`). Permissions are the second wall; the signatures
// and the sealing are the first.
//
// # Names and values
//
// A name is 3 to 63 characters: a Latin letter first, then letters, digits,
// hyphens or underscores, and a letter or digit last ([ValidateName]). Names
// that change how a process behaves (PATH, LD_PRELOAD, PYTHONSTARTUP, ...)
// are refused when created and ignored by agents ([Forbidden]). A value is
// UTF-8 text without NUL bytes, at most [MaxValueSize] bytes
// ([ValidateValue]).
//
// Errors name the key and the reason and never contain a value; each way a
// record can be bad is a sentinel usable with errors.Is.
package protocol
