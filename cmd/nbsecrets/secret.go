package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"golang.org/x/sys/unix"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// The secret command: nbsecrets secret
// create|update|delete|clone|share|unshare|list.
//
// A value is read from standard input, or from the file named by
// --from-file, never from the command line (where shell history and ps
// would see it). One trailing newline ("\n", or "\r\n") is stripped, so
// `echo hunter2 | nbsecrets secret create DB_PASSWORD` stores "hunter2"; a
// value that really ends in a newline needs a second one. An empty value is
// refused by create and update, and means "no new value" where a value is
// optional (update --rename, clone); there a terminal on standard input is
// not read. The CLI finds the instance through dev.json in --state-dir, acts
// as --as USER (default: the instance's user) with the key in
// <state-dir>/keys/users/<USER>.nk, and seals the value to the service's
// curve key from dev.json. No command prints a value.

const secretUsage = `Usage: nbsecrets secret <command> [flags] [NAME]

Commands:
  create NAME [--project P] [--from-file F]    make a secret, private or in project P
  update NAME [--rename NEW] [--project P]     a new value and/or a new name
  delete NAME [--project P]                    destroy a secret in every workspace
  clone NAME NEW [--project P] [--from-project P]
                                               an independent copy, private or in project P
  share NAME --community C [--project P]       share with community C (its admins only)
  unshare NAME --community C                   withdraw it from community C (its admins only)
  list [--json]                                the secrets you can see (never a value)

The value comes from standard input or --from-file F, never from the command
line. One trailing newline is stripped from it. An empty value is refused by
create and update; for update --rename and clone it means "keep the value".
A NAME means your private secret first, then the one in your projects;
--project P (update, delete, share) picks project P's. Secrets shared with
you through a community can be used and cloned, not changed.
Every command takes --state-dir DIR and --as USER.
Run 'nbsecrets secret <command> --help' for its flags.
`

const (
	// connectTimeout bounds the connection to the instance's NATS server.
	connectTimeout = 2 * time.Second
	// secretTimeout bounds one request to the secrets service.
	secretTimeout = 15 * time.Second
)

var secretCommands = map[string]func(ctx context.Context, env *cliEnv, args []string) error{
	"create":  runSecretCreate,
	"update":  runSecretUpdate,
	"delete":  runSecretDelete,
	"list":    runSecretList,
	"clone":   runSecretClone,
	"share":   runSecretShare,
	"unshare": runSecretUnshare,
}

func runSecret(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(env.stderr, secretUsage)
		return errUsage
	}
	switch args[0] {
	case "-h", "--help", "-help", "help":
		fmt.Fprint(env.stdout, secretUsage)
		return flag.ErrHelp
	}
	sub, ok := secretCommands[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "nbsecrets secret: unknown command %q\n\n%s", args[0], secretUsage)
		return errUsage
	}
	return sub(ctx, env, args[1:])
}

// secretFlags are the flags every secret command takes.
//
// Against a local instance (nbsecrets dev) --state-dir is all it takes.
// Against a deployed service (nbsecrets serve), --nats selects it: then the
// caller is whoever holds the user's request-signing key (--user,
// --user-key), the service's curve key is pinned with --service-curve-key,
// and NATS credentials come from --nkey or --creds.
type secretFlags struct {
	fs       *flag.FlagSet
	stateDir *string
	as       *string

	natsURL, user, userKey, serviceCurve *string
	auth                                 *natsAuthFlags
}

func newSecretFlags(env *cliEnv, name, synopsis string) *secretFlags {
	fs := newFlags(env, "secret "+name, synopsis)
	return &secretFlags{
		fs:           fs,
		stateDir:     stateDirFlag(fs),
		as:           fs.String("as", "", "act as this user on a local instance (default: the instance's user)"),
		natsURL:      fs.String("nats", envOr("NBSECRETS_NATS", ""), "NATS URL of a deployed service; empty: the local instance of --state-dir ($NBSECRETS_NATS)"),
		user:         fs.String("user", envOr("NBSECRETS_USER", ""), "with --nats: your user id ($NBSECRETS_USER)"),
		userKey:      fs.String("user-key", envOr("NBSECRETS_USER_KEY", ""), "with --nats: seed file of your request-signing nkey ($NBSECRETS_USER_KEY)"),
		serviceCurve: fs.String("service-curve-key", envOr("NBSECRETS_SERVICE_CURVE_KEY", ""), "with --nats: the service's curve public key ($NBSECRETS_SERVICE_CURVE_KEY)"),
		auth:         addNATSAuthFlags(fs),
	}
}

// session dials the service the flags name and bounds the request with
// secretTimeout; done closes both.
func (f *secretFlags) session(ctx context.Context) (*controlplane.Client, string, context.Context, func(), error) {
	client, user, closeConn, err := f.dial()
	if err != nil {
		return nil, "", nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, secretTimeout)
	return client, user, ctx, func() { cancel(); closeConn() }, nil
}

// dial connects to the service the flags name.
func (f *secretFlags) dial() (*controlplane.Client, string, func(), error) {
	if *f.natsURL == "" {
		return dialSecrets(*f.stateDir, *f.as)
	}
	return dialService(*f.natsURL, *f.user, *f.userKey, *f.serviceCurve, f.auth)
}

// parse parses args, flags before or after the positional arguments, and
// returns exactly want positional arguments.
func (f *secretFlags) parse(env *cliEnv, args []string, want int) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(f.fs, args); err != nil {
			return nil, err
		}
		args = f.fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != want {
		switch {
		case want == 1 && len(pos) == 0:
			fmt.Fprintf(env.stderr, "%s: missing the secret's NAME\n", f.fs.Name())
		case want == 1 && len(pos) == 2, want == 2 && len(pos) == 3:
			fmt.Fprintf(env.stderr, "%s: too many arguments; values are read from standard input or --from-file, never from the command line\n", f.fs.Name())
		case len(pos) < want:
			fmt.Fprintf(env.stderr, "%s: %d arguments, want %d\n", f.fs.Name(), len(pos), want)
		default:
			fmt.Fprintf(env.stderr, "%s: unexpected arguments %q\n", f.fs.Name(), pos[want:])
		}
		f.fs.Usage()
		return nil, errUsage
	}
	return pos, nil
}

// checkName refuses a name no secret may have, saying which rule it breaks
// (a usage error). A valid name that shells cannot use gets a note on
// standard error, and the command goes on.
func checkName(env *cliEnv, cmd, name string) error {
	if err := protocol.ValidateName(name); err != nil {
		fmt.Fprintf(env.stderr, "nbsecrets secret %s: %s\n", cmd, strings.TrimPrefix(err.Error(), "protocol: "))
		return errUsage
	}
	if !protocol.IsShellIdentifier(name) {
		fmt.Fprintf(env.stderr, "nbsecrets secret %s: note: %s has a hyphen, so it is not a shell variable name: os.environ and programs a kernel starts directly see it, "+
			"but a %%%%bash cell cannot expand it, and a `!` command sees it only where the kernel's $SHELL is bash, not dash (Debian's /bin/sh); %s has none of these limits\n",
			cmd, name, strings.ReplaceAll(name, "-", "_"))
	}
	return nil
}

func runSecretCreate(ctx context.Context, env *cliEnv, args []string) error {
	f := newSecretFlags(env, "create", "NAME [--project P] [--from-file F] [--state-dir DIR] [--as USER]  (value on standard input)")
	fromFile := f.fs.String("from-file", "", "read the value from this file instead of standard input")
	project := f.fs.String("project", "", "share the secret with this project (default: private to you)")
	pos, err := f.parse(env, args, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	if err := checkName(env, "create", name); err != nil {
		return err
	}
	value, err := readValue(env, *fromFile)
	if err != nil {
		return err
	}
	defer clear(value)
	client, user, ctx, done, err := f.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	info, err := client.Create(ctx, name, value, controlplane.CreateOptions{Project: *project})
	if err != nil {
		return fmt.Errorf("creating %s: %w", name, err)
	}
	fmt.Fprintf(env.stdout, "Created secret %s (%s, version %d)\n", info.Name, describeScope(info.Scope, user), info.Version)
	noteHides(env, info)
	return nil
}

func runSecretUpdate(ctx context.Context, env *cliEnv, args []string) error {
	f := newSecretFlags(env, "update", "NAME [--rename NEW] [--project P] [--from-file F] [--state-dir DIR] [--as USER]  (value on standard input)")
	fromFile := f.fs.String("from-file", "", "read the value from this file instead of standard input")
	rename := f.fs.String("rename", "", "give the secret this name (the value is then optional: empty input keeps it)")
	project := f.fs.String("project", "", "the secret of this project (default: yours, else the one in your projects)")
	pos, err := f.parse(env, args, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	if *rename != "" {
		if err := checkName(env, "update", *rename); err != nil {
			return err
		}
	}
	var value []byte
	if *rename != "" {
		value, err = readOptionalValue(env, *fromFile)
	} else {
		value, err = readValue(env, *fromFile)
	}
	if err != nil {
		return err
	}
	defer clear(value)
	client, user, ctx, done, err := f.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	opts := []controlplane.Option{controlplane.InProject(*project)}
	if *rename != "" {
		opts = append(opts, controlplane.Rename(*rename))
	}
	info, err := client.Update(ctx, name, value, opts...)
	if err != nil {
		return fmt.Errorf("updating %s: %w", name, err)
	}
	switch {
	case info.Name != name && value != nil:
		fmt.Fprintf(env.stdout, "Renamed secret %s to %s with a new value (%s, version %d)\n", name, info.Name, describeScope(info.Scope, user), info.Version)
	case info.Name != name:
		fmt.Fprintf(env.stdout, "Renamed secret %s to %s (%s, version %d)\n", name, info.Name, describeScope(info.Scope, user), info.Version)
	default:
		fmt.Fprintf(env.stdout, "Updated secret %s (%s, version %d)\n", info.Name, describeScope(info.Scope, user), info.Version)
	}
	noteHides(env, info)
	return nil
}

func runSecretDelete(ctx context.Context, env *cliEnv, args []string) error {
	f := newSecretFlags(env, "delete", "NAME [--project P] [--state-dir DIR] [--as USER]")
	project := f.fs.String("project", "", "the secret of this project (default: yours, else the one in your projects)")
	pos, err := f.parse(env, args, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	client, _, ctx, done, err := f.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	if err := client.Delete(ctx, name, controlplane.InProject(*project)); err != nil {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	fmt.Fprintln(env.stdout, "Secret destroyed")
	return nil
}

func runSecretClone(ctx context.Context, env *cliEnv, args []string) error {
	f := newSecretFlags(env, "clone", "NAME NEW [--project P] [--from-project P] [--from-file F] [--state-dir DIR] [--as USER]  (optional value on standard input)")
	fromFile := f.fs.String("from-file", "", "read the copy's value from this file instead of standard input")
	project := f.fs.String("project", "", "put the copy in this project (default: private to you)")
	from := f.fs.String("from-project", "", "copy the secret of this project (default: yours, else the one in your projects or communities)")
	pos, err := f.parse(env, args, 2)
	if err != nil {
		return err
	}
	name, newName := pos[0], pos[1]
	if err := checkName(env, "clone", newName); err != nil {
		return err
	}
	value, err := readOptionalValue(env, *fromFile)
	if err != nil {
		return err
	}
	defer clear(value)
	client, user, ctx, done, err := f.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	info, err := client.Clone(ctx, name, newName, value, controlplane.ToProject(*project), controlplane.InProject(*from))
	if err != nil {
		return fmt.Errorf("cloning %s: %w", name, err)
	}
	how := "same value"
	if value != nil {
		how = "new value"
	}
	fmt.Fprintf(env.stdout, "Cloned secret %s to %s (%s, %s, version %d)\n", name, info.Name, describeScope(info.Scope, user), how, info.Version)
	noteHides(env, info)
	return nil
}

func runSecretShare(ctx context.Context, env *cliEnv, args []string) error {
	return shareOrUnshare(ctx, env, args, true)
}

func runSecretUnshare(ctx context.Context, env *cliEnv, args []string) error {
	return shareOrUnshare(ctx, env, args, false)
}

func shareOrUnshare(ctx context.Context, env *cliEnv, args []string, share bool) error {
	cmd, synopsis := "share", "NAME --community C [--project P] [--state-dir DIR] [--as USER]"
	if !share {
		cmd, synopsis = "unshare", "NAME --community C [--state-dir DIR] [--as USER]"
	}
	f := newSecretFlags(env, cmd, synopsis)
	community := f.fs.String("community", "", "the community (required; you must be one of its admins)")
	var project *string
	if share {
		project = f.fs.String("project", "", "the secret of this project (default: yours, else the one in your projects)")
	}
	pos, err := f.parse(env, args, 1)
	if err != nil {
		return err
	}
	if *community == "" {
		fmt.Fprintf(env.stderr, "%s: missing --community\n", f.fs.Name())
		f.fs.Usage()
		return errUsage
	}
	name := pos[0]
	client, _, ctx, done, err := f.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	if share {
		info, err := client.Share(ctx, name, *community, controlplane.InProject(*project))
		if err != nil {
			return fmt.Errorf("sharing %s: %w", name, err)
		}
		fmt.Fprintf(env.stdout, "Shared secret %s with community %s (version %d, %d workspaces)\n", info.Name, *community, info.Version, len(info.Workspaces))
		return nil
	}
	info, err := client.Unshare(ctx, name, *community)
	if err != nil {
		return fmt.Errorf("unsharing %s: %w", name, err)
	}
	fmt.Fprintf(env.stdout, "Withdrew secret %s from community %s (version %d, %d workspaces)\n", info.Name, *community, info.Version, len(info.Workspaces))
	return nil
}

func runSecretList(ctx context.Context, env *cliEnv, args []string) error {
	f := newSecretFlags(env, "list", "[--json] [--state-dir DIR] [--as USER]")
	asJSON := f.fs.Bool("json", false, "print a JSON array instead of a table")
	if _, err := f.parse(env, args, 0); err != nil {
		return err
	}
	client, _, ctx, done, err := f.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	list, err := client.List(ctx)
	if err != nil {
		return fmt.Errorf("listing secrets: %w", err)
	}
	if *asJSON {
		if list == nil {
			list = []controlplane.SecretInfo{}
		}
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSCOPE\tVERSION\tUPDATED\tBY\tACCESS\tSHARED-WITH\tWORKSPACES\tNOTE")
	for _, s := range list {
		access := "use"
		if s.Editable {
			access = "edit"
		}
		note := "-"
		switch {
		case s.ShadowedBy != nil:
			note = "hidden-by:" + s.ShadowedBy.String()
		case s.Via != "":
			note = "via:community:" + s.Via
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Scope, s.Version, s.UpdatedAt.UTC().Format(time.RFC3339),
			s.UpdatedBy, access, orDash(s.Communities), orDash(s.Workspaces), note)
	}
	return tw.Flush()
}

// orDash joins a list with commas, "-" when it is empty.
func orDash(l []string) string {
	if len(l) == 0 {
		return "-"
	}
	return strings.Join(l, ",")
}

// describeScope says who a secret belongs to, from user's point of view.
func describeScope(s protocol.Scope, user string) string {
	switch {
	case s.Kind == protocol.ScopeUser && s.ID == user:
		return "private"
	case s.Kind == protocol.ScopeProject:
		return "project " + s.ID
	}
	return s.String()
}

// dialSecrets connects to the instance in stateDir as user (default: the
// instance's user) and returns a client of its secrets service, the user
// it acts as, and a function that closes the connection.
func dialSecrets(stateDir, user string) (*controlplane.Client, string, func(), error) {
	info, err := readDevInfo(stateDir)
	if err != nil {
		return nil, "", nil, err
	}
	if user == "" {
		user = info.User
	}
	if err := protocol.ValidateID(user); err != nil {
		return nil, "", nil, fmt.Errorf("user: %w", err)
	}
	if !strings.HasPrefix(info.SealKey, "X") {
		return nil, "", nil, fmt.Errorf("%s has no service curve key; is the instance from this version of nbsecrets?", filepath.Join(stateDir, devInfoFile))
	}
	keyPath := filepath.Join(stateDir, "keys", "users", user+".nk")
	key, err := keyfile.Load(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", nil, fmt.Errorf("no key for user %s (looked for %s)", user, keyPath)
	}
	if err != nil {
		return nil, "", nil, fmt.Errorf("key of user %s: %w", user, err)
	}
	opts := []nats.Option{nats.Name("nbsecrets secret"), nats.Timeout(connectTimeout), nats.NoReconnect()}
	auth, err := devNATSUserOption(stateDir, user)
	if err != nil {
		return nil, "", nil, err
	}
	if auth != nil {
		opts = append(opts, auth)
	}
	nc, err := nats.Connect(info.NATSURL, opts...)
	if err != nil {
		return nil, "", nil, fmt.Errorf("cannot reach the instance's NATS server at %s (from %s; is 'nbsecrets dev --state-dir %s' running?): %w",
			info.NATSURL, filepath.Join(stateDir, devInfoFile), stateDir, err)
	}
	return controlplane.NewClient(nc, user, key, info.SealKey), user, nc.Close, nil
}

// dialService connects to a deployed service as user, whose request-signing
// key is in userKey.
func dialService(url, user, userKey, serviceCurve string, auth *natsAuthFlags) (*controlplane.Client, string, func(), error) {
	var missing []string
	for flag, v := range map[string]string{"--user": user, "--user-key": userKey, "--service-curve-key": serviceCurve} {
		if v == "" {
			missing = append(missing, flag)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, "", nil, fmt.Errorf("with --nats, give %s", strings.Join(missing, ", "))
	}
	if err := protocol.ValidateID(user); err != nil {
		return nil, "", nil, fmt.Errorf("user: %w", err)
	}
	if !nkeys.IsValidPublicCurveKey(serviceCurve) {
		return nil, "", nil, errors.New("--service-curve-key is not a curve public key (X...)")
	}
	key, err := keyfile.Load(userKey)
	if err != nil {
		return nil, "", nil, fmt.Errorf("key of user %s: %w", user, err)
	}
	opts, err := auth.options()
	if err != nil {
		return nil, "", nil, err
	}
	opts = append(opts, nats.Name("nbsecrets secret"), nats.Timeout(connectTimeout), nats.NoReconnect())
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, "", nil, fmt.Errorf("cannot reach NATS at %s: %w", url, err)
	}
	return controlplane.NewClient(nc, user, key, serviceCurve), user, nc.Close, nil
}

// readValue reads a secret value from the file path, or from standard input
// when path is "", strips one trailing newline ("\n" or "\r\n") and checks
// it: not empty, UTF-8 without NUL, at most protocol.MaxValueSize bytes.
// Its errors never contain the value. The caller clears the value.
func readValue(env *cliEnv, path string) ([]byte, error) {
	src, r := "standard input", env.stdin
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("reading the value: %w", err)
		}
		defer f.Close()
		src, r = path, f
	} else if isTerminal(env.stdin) {
		fmt.Fprintln(env.stderr, "Reading the value from standard input; end it with Ctrl-D.")
	}
	if r == nil {
		return nil, errors.New("no value: standard input is closed; use --from-file")
	}
	// Room for the largest value and its newline, and one byte more to
	// tell that it is too large.
	value, err := io.ReadAll(io.LimitReader(r, protocol.MaxValueSize+3))
	if err != nil {
		clear(value)
		return nil, fmt.Errorf("reading the value from %s: %w", src, err)
	}
	value = stripNewline(value)
	if len(value) == 0 {
		return nil, fmt.Errorf("%w from %s: a secret needs a value (pipe it in or use --from-file)", errEmptyValue, src)
	}
	if len(value) > protocol.MaxValueSize {
		clear(value)
		return nil, fmt.Errorf("value from %s is too large: more than %d bytes", src, protocol.MaxValueSize)
	}
	if err := protocol.ValidateValue(value); err != nil {
		clear(value)
		return nil, fmt.Errorf("value from %s: %w", src, err)
	}
	return value, nil
}

// readOptionalValue reads a value where one is optional: from the file
// path, else from standard input unless it is a terminal. Empty input (or
// a terminal) means no new value: nil.
func readOptionalValue(env *cliEnv, path string) ([]byte, error) {
	if path == "" && (env.stdin == nil || isTerminal(env.stdin)) {
		return nil, nil
	}
	value, err := readValue(env, path)
	if errors.Is(err, errEmptyValue) {
		return nil, nil
	}
	return value, err
}

// stripNewline removes one trailing "\n" or "\r\n".
func stripNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}

// errEmptyValue is empty input where a value is needed.
var errEmptyValue = errors.New("empty value")

// isTerminal reports whether r is a terminal, where a user types the value.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
