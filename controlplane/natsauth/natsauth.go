// Package natsauth generates the nats-server authorisation of an nbsecrets
// deployment: who may connect (one NATS user nkey per secrets service
// instance, workspace agent and user) and what each may do, so that a
// workspace agent reads only its own records and writes none, and only the
// secrets service writes records.
//
// # Accounts
//
// Everyone gets an account of their own, and only the service's account has
// JetStream:
//
//	nbsecrets                the secrets service (every instance): the KV
//	                         buckets "nbsecrets", "nbsecrets_service" and
//	                         "nbsecrets_nonces"
//	nbsecrets-ws-<id>        one workspace's agent
//	nbsecrets-user-<id>      one user's CLI
//
// The service's account exports, as services, only what the others need:
// the API (nbsecrets.api.v1.*) to the user accounts, and to each workspace
// account the JetStream API requests of its one consumer on that
// workspace's records. Separate accounts are what make "writes nothing"
// hold. Within one account a JetStream API response or a pull consumer's
// delivery goes to whatever reply subject the requester chose, and the
// stream stores anything published on its subjects: a reader allowed only to
// create consumers could still overwrite any record by asking for the reply
// on "$KV.nbsecrets.<other workspace>.<secret id>", and a user could make the
// service answer onto a record's subject. Through an import the server
// rewrites the reply subject to a "_R_." subject of its own, so no request
// from another account can aim anything at a stream subject. Each account
// also keeps its inboxes to itself, so no agent or user can subscribe to
// another's replies or deliveries, and nobody needs a custom inbox prefix.
//
// # Permissions
//
// On top of the accounts every user has publish and subscribe permissions,
// so that anything else is refused with a permissions violation rather than
// silently going nowhere. The exact subjects are those of [AgentPermissions],
// [UserPermissions] and [ServicePermissions]; their comments say why each
// is there. An agent's consumer (see agent/sync.go) has one name,
// protocol.ConsumerName, and the agent needs three JetStream API requests on
// it and nothing else: CONSUMER.CREATE with that name and its one filter
// subject in the request subject, CONSUMER.MSG.NEXT (pull requests) and
// CONSUMER.DELETE (the consumer left from a previous read). It never asks
// for stream or consumer info. The server checks the filter in the subject
// against the consumer's configuration and refuses it together with
// multiple filters; creation under another name, or without a filter in
// the subject, is not allowed at all. So an agent cannot pull from or
// delete another workspace's consumer, nor make consumers of other names;
// the service account's JetStream limits (JetStreamLimits) bound what the
// one name can cost. The records are sealed to their workspace anyway: the
// permissions are the second wall, the sealing the first.
//
// # Agents that register at run time
//
// hub-service's agents make their NATS key when they start, so no
// configuration can list them in advance. For them [GenerateCallout]
// renders a fixed configuration (the service's account and one shared
// agents' account) and [Callout] answers the server's auth callout with
// each agent's workspace permissions; callout.go says what that model
// guarantees and what an account per agent guarantees beyond it.
//
// # Keys
//
// A user's NATS nkey must not be the key that signs the user's requests
// (Directory's User.PublicKey): NATS authentication signs a nonce that the
// server chooses, so a rogue server could otherwise obtain a signed request.
// [Generate] refuses such a configuration.
package natsauth

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// ErrInvalid is returned for a configuration that cannot be generated: an
// unknown or missing identity, a key of the wrong kind, a key used twice.
var ErrInvalid = errors.New("natsauth: invalid configuration")

// ServiceAccount is the account of the secrets service. It holds the
// JetStream buckets.
const ServiceAccount = "nbsecrets"

// WorkspaceAccount is the account of the agent of workspace id.
func WorkspaceAccount(id string) string { return "nbsecrets-ws-" + id }

// UserAccount is the account of user id's CLI.
func UserAccount(id string) string { return controlplane.UserAccountPrefix + id }

// Permissions are one NATS user's publish and subscribe allow lists. A
// subscribe entry "SUBJECT QUEUE" allows that subject only in that queue
// group. AllowResponses lets the user publish one reply to the reply
// subject of each request it received.
type Permissions struct {
	Publish        []string
	Subscribe      []string
	AllowResponses bool
}

// jsAPI is the JetStream API prefix; agents and the service use the default.
const jsAPI = "$JS.API."

var (
	recordStream  = protocol.StreamName()              // KV_nbsecrets
	serviceStream = "KV_" + controlplane.ServiceBucket // KV_nbsecrets_service
	nonceStream   = "KV_" + controlplane.NonceBucket   // KV_nbsecrets_nonces
)

// consumerCreate is the subject on which ws's agent creates its consumer:
// its one name (protocol.ConsumerName), the workspace's filter subject.
func consumerCreate(ws string) string {
	return jsAPI + "CONSUMER.CREATE." + recordStream + "." + protocol.ConsumerName(ws) + "." + protocol.WorkspaceFilter(ws)
}

// consumerNext and consumerDelete are the pull and delete requests on ws's
// consumer, and on no other.
func consumerNext(ws string) string {
	return jsAPI + "CONSUMER.MSG.NEXT." + recordStream + "." + protocol.ConsumerName(ws)
}

func consumerDelete(ws string) string {
	return jsAPI + "CONSUMER.DELETE." + recordStream + "." + protocol.ConsumerName(ws)
}

// liveSubject is where the records of ws are republished for its agent in
// live delivery (controlplane.Options.Live, agent.DeliveryLive): exported
// from the service's account to ws's alone, subscribed by its agent,
// published by nobody (the server's RePublish does, in the service's
// account, under no user's permissions).
func liveSubject(ws string) string { return controlplane.LivePrefix + ws + ".>" }

// leaderElected is the advisory the server publishes in the service's
// account when the records stream elects a leader: a live agent reads its
// records again then (see controlplane.LeaderElected). Exported from the
// service's account to the agents', subscribed by them, published by
// nobody (the server does, under no user's permissions). It names the
// stream, its leader and replicas (server names), nothing of any record.
const leaderElected = controlplane.LeaderElected

// jsAPIInfo is imported into each workspace account although its agent may
// not publish it: an account without JetStream of its own gets the server's
// "$JS.API.>" import (to answer "JetStream not enabled") unless an import
// of its own covers $JS.API.INFO, and that import would take the agent's
// requests to the agent's own account instead of the service's.
const jsAPIInfo = jsAPI + "INFO"

// AgentPermissions are what the agent of workspace ws may do in its account.
//
//	publish $JS.API.CONSUMER.CREATE.KV_nbsecrets.nbsecrets-ws-<ws>.$KV.nbsecrets.<ws>.>
//	        creating its consumer: its one name, its own filter
//	publish $JS.API.CONSUMER.MSG.NEXT.KV_nbsecrets.nbsecrets-ws-<ws>
//	        the consumer's pull requests (Messages)
//	publish $JS.API.CONSUMER.DELETE.KV_nbsecrets.nbsecrets-ws-<ws>
//	        deleting its consumer left from a previous read
//	publish nbsecrets.status.<ws>
//	        its rollout status, exported to the service's account only
//	subscribe _INBOX.>
//	        API replies and deliveries; the account is the agent's alone
//	subscribe nbsecrets.live.<ws>.>
//	        its records republished (live delivery), imported from the
//	        service's account
//	subscribe $JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.KV_nbsecrets
//	        the records stream's leader elections (live delivery reads
//	        again after one), imported from the service's account
func AgentPermissions(ws string) Permissions {
	return Permissions{
		Publish:   []string{consumerCreate(ws), consumerNext(ws), consumerDelete(ws), protocol.StatusSubject(ws)},
		Subscribe: []string{"_INBOX.>", liveSubject(ws), leaderElected},
	}
}

// UserPermissions are what a user's CLI may do in its account.
//
//	publish nbsecrets.api.v1.*    requests to the secrets service
//	subscribe _INBOX.>            their replies; the account is the user's alone
func UserPermissions() Permissions {
	return Permissions{
		Publish:   []string{controlplane.SubjectPrefix + "*"},
		Subscribe: []string{"_INBOX.>"},
	}
}

// ServicePermissions are what the secrets service may do in its account,
// as controlplane.Service uses them.
//
//	publish $KV.nbsecrets.>, $KV.nbsecrets_service.> and $KV.nbsecrets_nonces.>
//	        writing records, its own state (Create, Update, Delete) and the
//	        nonces of accepted requests (Create), which every instance shares
//	publish $JS.API.INFO, $JS.API.STREAM.INFO.<stream>, $JS.API.STREAM.CREATE.<stream>
//	        binding the buckets, creating them when missing
//	publish $JS.API.STREAM.UPDATE.KV_nbsecrets
//	        adding the live RePublish to an existing records bucket
//	        (controlplane.Options.Live)
//	publish $JS.API.DIRECT.GET.<stream>.>
//	        KV Get on the buckets (KV Create reads a key it found taken)
//	publish $JS.API.CONSUMER.CREATE.KV_nbsecrets_service.>,
//	        $JS.API.CONSUMER.DELETE.KV_nbsecrets_service.*, $JS.FC.KV_nbsecrets_service.>
//	        listing keys of its own bucket (a short-lived ordered consumer
//	        with flow control)
//	allow_responses
//	        replying to requests (the replies come through imports as _R_.)
//	subscribe nbsecrets.api.v1.* in queue group nbsecrets-service
//	        serving the API
//	subscribe _INBOX.>
//	        its own API replies and deliveries
//	subscribe nbsecrets.status.*
//	        the agents' rollout status, imported from each workspace's account
//
// It may not delete or purge streams, update any but the records stream,
// publish on the live subjects, nor read other accounts' subjects.
func ServicePermissions() Permissions {
	var pub []string
	for _, bucket := range []string{protocol.Bucket, controlplane.ServiceBucket, controlplane.NonceBucket} {
		pub = append(pub, "$KV."+bucket+".>")
	}
	pub = append(pub, jsAPI+"INFO")
	for _, stream := range []string{recordStream, serviceStream, nonceStream} {
		pub = append(pub,
			jsAPI+"STREAM.INFO."+stream,
			jsAPI+"STREAM.CREATE."+stream,
			jsAPI+"DIRECT.GET."+stream+".>")
	}
	pub = append(pub,
		jsAPI+"STREAM.UPDATE."+recordStream,
		jsAPI+"CONSUMER.CREATE."+serviceStream+".>",
		jsAPI+"CONSUMER.DELETE."+serviceStream+".*",
		"$JS.FC."+serviceStream+".>")
	return Permissions{
		Publish:        pub,
		Subscribe:      []string{controlplane.SubjectPrefix + "* " + controlplane.QueueGroup, "_INBOX.>", protocol.StatusSubjectPrefix + "*"},
		AllowResponses: true,
	}
}

// Config is what Generate needs: who exists and each one's NATS user nkey
// (public, "U..."). Every workspace and every user of Directory needs a key;
// a key may serve one identity only.
type Config struct {
	// Directory lists the workspaces and users. Required.
	Directory *controlplane.Directory
	// ServiceKeys are the NATS nkeys of the secrets service's instances
	// (one shared key or one per instance). At least one.
	ServiceKeys []string
	// AgentKeys maps each workspace id to its agent's NATS nkey.
	AgentKeys map[string]string
	// UserKeys maps each user id to the NATS nkey of the user's CLI. It
	// must differ from the user's request-signing key in Directory.
	UserKeys map[string]string
	// Limits bound the service account's JetStream; the zero value gives
	// the defaults of JetStreamLimits.
	Limits JetStreamLimits
}

// JetStreamLimits bound what the service's account may hold in
// JetStream, whoever in it (or importing from it) asks: an agent may create
// consumers on its records, and without a limit it could create thousands
// (each costs the server memory and store). Zero fields take the defaults.
type JetStreamLimits struct {
	// MaxConsumers is the most consumers at once across the account's
	// streams. Default: two per workspace (an agent has one; the
	// margin is for growth) plus 64 for the service's own key listings.
	MaxConsumers int
	// MaxStreams is the most streams. Default 8: the service's buckets are
	// 3.
	MaxStreams int
	// MaxMemory and MaxStore are the most bytes of memory and file
	// storage; 0 leaves them unlimited. A single server reserves them
	// against its own limits at start and refuses the account JetStream
	// when they do not fit, so the right values depend on the server.
	MaxMemory, MaxStore int64
}

// withDefaults fills in the zero fields for a deployment of workspaces
// workspaces.
func (l JetStreamLimits) withDefaults(workspaces int) JetStreamLimits {
	if l.MaxConsumers == 0 {
		l.MaxConsumers = 2*workspaces + 64
	}
	if l.MaxStreams == 0 {
		l.MaxStreams = 8
	}
	if l.MaxMemory <= 0 {
		l.MaxMemory = -1
	}
	if l.MaxStore <= 0 {
		l.MaxStore = -1
	}
	return l
}

// Generate renders the nats-server configuration of cfg: an accounts block
// to include in the server's configuration (which sets listen, TLS and
// jetstream { store_dir }), for example with "include nbsecrets-auth.conf".
// The output depends only on cfg: the same input gives the same bytes.
func Generate(cfg Config) ([]byte, error) {
	d := cfg.Directory
	if d == nil {
		return nil, fmt.Errorf("%w: no directory", ErrInvalid)
	}
	if len(cfg.ServiceKeys) == 0 {
		return nil, fmt.Errorf("%w: no NATS key for the secrets service", ErrInvalid)
	}
	used := map[string]string{} // key -> whose
	claim := func(key, who string) error {
		if !nkeys.IsValidPublicUserKey(key) {
			return fmt.Errorf("%w: NATS key of %s is not a public user nkey (U...)", ErrInvalid, who)
		}
		if prev, dup := used[key]; dup {
			return fmt.Errorf("%w: %s and %s have the same NATS key", ErrInvalid, prev, who)
		}
		used[key] = who
		return nil
	}
	services := slices.Clone(cfg.ServiceKeys)
	sort.Strings(services)
	for i, k := range services {
		if err := claim(k, fmt.Sprintf("service key %d", i+1)); err != nil {
			return nil, err
		}
	}
	var wss, users []string
	for _, w := range d.Workspaces {
		if err := protocol.ValidateID(w.ID); err != nil {
			return nil, fmt.Errorf("%w: workspace: %w", ErrInvalid, err)
		}
		if _, ok := cfg.AgentKeys[w.ID]; !ok {
			return nil, fmt.Errorf("%w: no NATS key for the agent of workspace %s", ErrInvalid, w.ID)
		}
		wss = append(wss, w.ID)
	}
	signing := map[string]string{}
	for _, u := range d.Users {
		if err := protocol.ValidateID(u.ID); err != nil {
			return nil, fmt.Errorf("%w: user: %w", ErrInvalid, err)
		}
		if _, ok := cfg.UserKeys[u.ID]; !ok {
			return nil, fmt.Errorf("%w: no NATS key for user %s", ErrInvalid, u.ID)
		}
		users = append(users, u.ID)
		signing[u.ID] = u.PublicKey
	}
	for id := range cfg.AgentKeys {
		if !slices.Contains(wss, id) {
			return nil, fmt.Errorf("%w: NATS key for unknown workspace %q", ErrInvalid, id)
		}
	}
	for id := range cfg.UserKeys {
		if !slices.Contains(users, id) {
			return nil, fmt.Errorf("%w: NATS key for unknown user %q", ErrInvalid, id)
		}
	}
	sort.Strings(wss)
	sort.Strings(users)
	if c := slices.Compact(slices.Clone(wss)); len(c) != len(wss) {
		return nil, fmt.Errorf("%w: a workspace is listed twice", ErrInvalid)
	}
	if c := slices.Compact(slices.Clone(users)); len(c) != len(users) {
		return nil, fmt.Errorf("%w: a user is listed twice", ErrInvalid)
	}
	for _, ws := range wss {
		if err := claim(cfg.AgentKeys[ws], "the agent of workspace "+ws); err != nil {
			return nil, err
		}
	}
	for _, u := range users {
		if cfg.UserKeys[u] == signing[u] {
			return nil, fmt.Errorf("%w: user %s: the NATS key must not be the key that signs requests", ErrInvalid, u)
		}
		if err := claim(cfg.UserKeys[u], "user "+u); err != nil {
			return nil, err
		}
	}

	var b strings.Builder
	b.WriteString("# nbsecrets: NATS accounts and permissions, generated by 'nbsecrets nats-config'.\n")
	b.WriteString("# Include this file in the server's configuration; do not edit it by hand.\n")
	b.WriteString("# Only the account " + q(ServiceAccount) + " has JetStream; each workspace agent and each\n")
	b.WriteString("# user has an account of its own that imports what it may use.\n")
	b.WriteString("accounts {\n")

	// The service's account: JetStream, the service's users, the exports.
	fmt.Fprintf(&b, "  %s {\n", q(ServiceAccount))
	lim := cfg.Limits.withDefaults(len(wss))
	fmt.Fprintf(&b, "    jetstream {\n      max_consumers: %d\n      max_streams: %d\n      max_memory: %d\n      max_store: %d\n    }\n",
		lim.MaxConsumers, lim.MaxStreams, lim.MaxMemory, lim.MaxStore)
	b.WriteString("    users: [\n")
	for _, k := range services {
		writeUser(&b, k, ServicePermissions())
	}
	b.WriteString("    ]\n")
	b.WriteString("    exports: [\n")
	if len(users) > 0 {
		fmt.Fprintf(&b, "      {service: %s, accounts: %s}\n", q(controlplane.SubjectPrefix+"*"), list(mapped(users, UserAccount)))
	}
	for _, ws := range wss {
		acc := list([]string{WorkspaceAccount(ws)})
		fmt.Fprintf(&b, "      {service: %s, accounts: %s}\n", q(consumerCreate(ws)), acc)
		fmt.Fprintf(&b, "      {service: %s, response_type: stream, accounts: %s}\n", q(consumerNext(ws)), acc)
		fmt.Fprintf(&b, "      {service: %s, accounts: %s}\n", q(consumerDelete(ws)), acc)
		fmt.Fprintf(&b, "      {stream: %s, accounts: %s}\n", q(liveSubject(ws)), acc)
	}
	if len(wss) > 0 {
		fmt.Fprintf(&b, "      {service: %s, accounts: %s}\n", q(jsAPIInfo), list(mapped(wss, WorkspaceAccount)))
		fmt.Fprintf(&b, "      {stream: %s, accounts: %s}\n", q(leaderElected), list(mapped(wss, WorkspaceAccount)))
	}
	b.WriteString("    ]\n")
	if len(wss) > 0 { // each agent's rollout status, from its own account only
		b.WriteString("    imports: [\n")
		for _, ws := range wss {
			fmt.Fprintf(&b, "      {stream: {account: %s, subject: %s}}\n", q(WorkspaceAccount(ws)), q(protocol.StatusSubject(ws)))
		}
		b.WriteString("    ]\n")
	}
	b.WriteString("  }\n")

	for _, ws := range wss {
		fmt.Fprintf(&b, "  %s {\n", q(WorkspaceAccount(ws)))
		b.WriteString("    users: [\n")
		writeUser(&b, cfg.AgentKeys[ws], AgentPermissions(ws))
		b.WriteString("    ]\n")
		fmt.Fprintf(&b, "    exports: [{stream: %s, accounts: [%s]}]\n", q(protocol.StatusSubject(ws)), q(ServiceAccount))
		b.WriteString("    imports: [\n")
		for _, s := range []string{consumerCreate(ws), consumerNext(ws), consumerDelete(ws), jsAPIInfo} {
			fmt.Fprintf(&b, "      {service: {account: %s, subject: %s}}\n", q(ServiceAccount), q(s))
		}
		fmt.Fprintf(&b, "      {stream: {account: %s, subject: %s}}\n", q(ServiceAccount), q(liveSubject(ws)))
		fmt.Fprintf(&b, "      {stream: {account: %s, subject: %s}}\n", q(ServiceAccount), q(leaderElected))
		b.WriteString("    ]\n")
		b.WriteString("  }\n")
	}
	for _, u := range users {
		fmt.Fprintf(&b, "  %s {\n", q(UserAccount(u)))
		b.WriteString("    users: [\n")
		writeUser(&b, cfg.UserKeys[u], UserPermissions())
		b.WriteString("    ]\n")
		b.WriteString("    imports: [\n")
		fmt.Fprintf(&b, "      {service: {account: %s, subject: %s}}\n", q(ServiceAccount), q(controlplane.SubjectPrefix+"*"))
		b.WriteString("    ]\n")
		b.WriteString("  }\n")
	}
	b.WriteString("}\n")
	return []byte(b.String()), nil
}

func writeUser(b *strings.Builder, key string, p Permissions) {
	fmt.Fprintf(b, "      {\n        nkey: %s\n        permissions: {\n", q(key))
	fmt.Fprintf(b, "          publish: {allow: %s}\n", list(p.Publish))
	fmt.Fprintf(b, "          subscribe: {allow: %s}\n", list(p.Subscribe))
	if p.AllowResponses {
		b.WriteString("          allow_responses: true\n")
	}
	b.WriteString("        }\n      }\n")
}

// q quotes s for the configuration. Every string here is an id checked by
// protocol.ValidateID, a key checked by nkeys or a constant subject: none
// holds a quote or a backslash.
func q(s string) string { return `"` + s + `"` }

func list(ss []string) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = q(s)
	}
	return "[" + strings.Join(out, ", ") + "]"
}

func mapped(ids []string, f func(string) string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = f(id)
	}
	return out
}
