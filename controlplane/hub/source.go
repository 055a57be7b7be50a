package hub

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// AdminsSuffix names a project's companion group of admins:
// "<group>-admins".
const AdminsSuffix = "-admins"

// DefaultInterval is how often a Source asks the hub for its groups, and
// so how soon a change of group membership takes effect.
const DefaultInterval = 2 * time.Second

// DefaultUsersInterval is how often a Source reads the hub's whole user
// list (who exists, hub admins, running servers). A user a group names,
// an agent registers for or the hub vouches for at login, whom the last
// list lacks, has it read at once.
const DefaultUsersInterval = 30 * time.Second

// DefaultMaxBackoff bounds the wait between polls of a hub that fails or
// is slow.
const DefaultMaxBackoff = time.Minute

// slowFactor keeps the service's share of a slow hub's time small: after a
// poll of the groups that took d, the next one waits at least
// slowFactor*d.
const slowFactor = 4

// usersSlowFactor is slowFactor for the user list, which on a large hub
// is its most expensive answer (JupyterHub 3.0 builds each user's model
// with its roles, groups and servers) and is needed less urgently.
const usersSlowFactor = 10

// startGrace is how long a registered workspace stays while the hub does
// not list its server yet (a server still starting).
const startGrace = 60 * time.Second

// SourceOptions configure a Source.
type SourceOptions struct {
	// Client reaches the hub. Required.
	Client *Client
	// GroupPrefix picks the groups that are projects: "" every group, else
	// those whose name starts with it (the project id drops the prefix).
	GroupPrefix string
	// Communities are the service's own communities (LoadCommunities).
	Communities []controlplane.Community
	// Interval is how often the hub's groups are polled. Zero:
	// DefaultInterval.
	Interval time.Duration
	// UsersInterval is how often the whole user list is read (at least
	// usersSlowFactor times as long as reading it took). Zero:
	// DefaultUsersInterval.
	UsersInterval time.Duration
	// MaxBackoff bounds the wait after failed or slow polls. Zero:
	// DefaultMaxBackoff.
	MaxBackoff time.Duration
	// Logger receives key/value logs. Nil discards.
	Logger hclog.Logger
	// Now is the clock. Nil: time.Now.
	Now func() time.Time
}

// Registration is a workspace an agent registered.
type Registration struct {
	Workspace string
	User      string
	Server    string // "" for the default server
	CurveKey  string
	At        time.Time
}

// Source is the directory of a JupyterHub. It is a
// controlplane.DirectorySource.
type Source struct {
	opts SourceOptions
	log  hclog.Logger

	mu     sync.Mutex
	regs   map[string]Registration // workspace -> registration
	keys   map[string]string       // user -> placeholder public key
	last   []byte                  // JSON of the directory applied last
	dir    *controlplane.Directory // applied last
	apply  func(*controlplane.Directory) error
	users  []User  // the hub's answer at the last poll
	groups []Group // (a registration is applied with them, without asking again)
	polled bool
	// What the source knows changes with: the hub's answers (hashes of
	// what the source reads of them) and the registrations.
	usersAt             time.Time // when the users were read (s.opts.Now)
	usersSum, groupsSum [32]byte
	regsGen             uint64
	built               inputs               // those of dir
	pending             bool                 // a registered server the hub does not list yet: build at every refresh
	added               map[string]time.Time // users read one by one, and when

	refreshMu sync.Mutex // one build and apply at a time
	// One read of each list at a time; the wall time the last completed
	// one began (a read asked for before it began is served by it).
	usersMu, groupsMu       sync.Mutex
	usersBegan, groupsBegan time.Time
	usersTook, groupsTook   time.Duration // how long the hub took to answer them (s.mu)
}

var _ controlplane.DirectorySource = (*Source)(nil)

// inputs are what a directory was built from.
type inputs struct {
	users, groups [32]byte
	regs          uint64
}

// pollMode says what a refresh asks the hub.
type pollMode int

const (
	pollNone      pollMode = iota // nothing: the last answer (asks everything if there is none)
	pollGroups                    // the groups; the users if a group names a user the last list lacks
	pollUsersOnly                 // the users
	pollUsers                     // the groups and the users
)

// sum hashes v's JSON: what the source reads of a hub answer.
func sum(v any) [32]byte {
	data, _ := json.Marshal(v)
	return sha256.Sum256(data)
}

// NewSource returns a Source; call Watch to follow the hub.
func NewSource(opts SourceOptions) (*Source, error) {
	if opts.Client == nil || opts.Client.APIURL == "" || opts.Client.Token == "" {
		return nil, errors.New("hub: the hub's API URL and the service's token are required")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.UsersInterval <= 0 {
		opts.UsersInterval = DefaultUsersInterval
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Source{opts: opts, log: log.Named("hub"), regs: map[string]Registration{}, keys: map[string]string{}, added: map[string]time.Time{}}, nil
}

// WorkspaceID is the workspace of a user's server: the user name for the
// default server, "<user>--<server>" for a named one.
func WorkspaceID(user, server string) (string, error) {
	id := user
	if server != "" {
		id = user + "--" + server
	}
	if err := protocol.ValidateID(id); err != nil {
		return "", fmt.Errorf("workspace of user %q server %q: %w", user, server, err)
	}
	return id, nil
}

// Directory asks the hub and returns the directory it implies now.
func (s *Source) Directory(ctx context.Context) (*controlplane.Directory, error) {
	if err := s.fetch(ctx, pollUsers); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.build(s.users, s.groups), nil
}

// fetch asks the hub what mode says and keeps the answers.
func (s *Source) fetch(ctx context.Context, mode pollMode) error {
	s.mu.Lock()
	polled := s.polled
	s.mu.Unlock()
	if !polled {
		mode = pollUsers
	}
	switch mode {
	case pollNone:
		return nil
	case pollUsersOnly:
		return s.fetchUsers(ctx)
	}
	if err := s.fetchGroups(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	missing := s.missingMembers(s.groups)
	usersDue := mode == pollUsers || (len(missing) > maxAddUsers && s.opts.Now().Sub(s.usersAt) >= s.opts.Interval)
	s.mu.Unlock()
	if !usersDue {
		if len(missing) > 0 && len(missing) <= maxAddUsers {
			return s.addUsers(ctx, missing)
		}
		return nil
	}
	if err := s.fetchUsers(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	s.polled = true
	s.mu.Unlock()
	return nil
}

// fetchGroups reads the groups, unless a read that began after the call
// has just ended.
func (s *Source) fetchGroups(ctx context.Context) error {
	asked := time.Now()
	s.groupsMu.Lock()
	defer s.groupsMu.Unlock()
	if s.groupsBegan.After(asked) {
		return nil
	}
	began := time.Now()
	groups, err := s.opts.Client.Groups(ctx)
	if err != nil {
		return err
	}
	took := time.Since(began)
	gsum := sum(groups)
	s.mu.Lock()
	s.groups, s.groupsSum, s.groupsTook = groups, gsum, took
	s.mu.Unlock()
	s.groupsBegan = began
	return nil
}

// fetchUsers reads the users, unless a read that began after the call
// has just ended.
func (s *Source) fetchUsers(ctx context.Context) error {
	asked := time.Now()
	s.usersMu.Lock()
	defer s.usersMu.Unlock()
	if s.usersBegan.After(asked) {
		return nil
	}
	began, now := time.Now(), s.opts.Now()
	users, err := s.opts.Client.Users(ctx)
	if err != nil {
		return err
	}
	took := time.Since(began)
	s.mu.Lock()
	s.usersTook = took
	// A user added one by one while the list was read stays, though the
	// list (its pages read before) may lack them.
	for name, at := range s.added {
		if !at.After(began) {
			delete(s.added, name)
		} else if i := slices.IndexFunc(s.users, func(u User) bool { return u.Name == name }); i >= 0 &&
			!slices.ContainsFunc(users, func(u User) bool { return u.Name == name }) {
			users = append(users, s.users[i])
		}
	}
	s.users, s.usersSum, s.usersAt = users, sum(users), now
	s.mu.Unlock()
	s.usersBegan = began
	return nil
}

// missingMembers are the users groups name whom the last user list lacks
// (users created since). s.mu is held.
func (s *Source) missingMembers(groups []Group) []string {
	known := make(map[string]bool, len(s.users))
	for _, u := range s.users {
		known[u.Name] = true
	}
	var missing []string
	for _, g := range groups {
		for _, u := range g.Users {
			if !known[u] {
				known[u] = true
				missing = append(missing, u)
			}
		}
	}
	return missing
}

// maxAddUsers is how many users missing from the last list are read one
// by one; more, and the whole list is read.
const maxAddUsers = 20

// addUsers reads users one by one (GET /users/{name}) and adds those the
// hub has to the last user list: a user created since it was read, named
// by a group, an agent or a login, without reading the whole list, which
// a large hub takes seconds to answer.
func (s *Source) addUsers(ctx context.Context, names []string) error {
	var found []User
	for _, name := range names {
		u, err := s.opts.Client.User(ctx, name)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		found = append(found, *u)
	}
	if len(found) == 0 {
		return nil
	}
	at := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	users := slices.Clone(s.users)
	for _, u := range found {
		if i := slices.IndexFunc(users, func(v User) bool { return v.Name == u.Name }); i >= 0 {
			users[i] = u
		} else {
			users = append(users, u)
		}
		s.added[u.Name] = at
	}
	s.users, s.usersSum = users, sum(users)
	return nil
}

// build makes the directory of the hub's users and groups and the
// registrations. s.mu is held.
func (s *Source) build(users []User, groups []Group) *controlplane.Directory {
	d := &controlplane.Directory{Users: []controlplane.User{}, Projects: []controlplane.Project{},
		Communities: []controlplane.Community{}, Workspaces: []controlplane.Workspace{}}
	known := map[string]User{}
	var admins []string
	for _, u := range users {
		if u.Kind != "" && u.Kind != "user" {
			continue
		}
		if err := protocol.ValidateID(u.Name); err != nil {
			s.log.Warn("hub user skipped: not a valid nbsecrets id", "user", u.Name, "error", err)
			continue
		}
		key, ok := s.keys[u.Name]
		if !ok {
			kp, err := nkeys.CreateUser()
			if err != nil {
				s.log.Error("making a placeholder key", "user", u.Name, "error", err)
				continue
			}
			key, _ = kp.PublicKey()
			s.keys[u.Name] = key
		}
		known[u.Name] = u
		d.Users = append(d.Users, controlplane.User{ID: u.Name, PublicKey: key})
		if u.Admin {
			admins = append(admins, u.Name)
		}
	}
	slices.SortFunc(d.Users, func(a, b controlplane.User) int { return strings.Compare(a.ID, b.ID) })
	byName := map[string]Group{}
	for _, g := range groups {
		byName[g.Name] = g
	}
	memberOf := map[string][]string{} // user -> projects
	for _, g := range groups {
		if !strings.HasPrefix(g.Name, s.opts.GroupPrefix) {
			continue
		}
		if base, ok := strings.CutSuffix(g.Name, AdminsSuffix); ok {
			if _, companion := byName[base]; companion {
				continue
			}
		}
		id := strings.TrimPrefix(g.Name, s.opts.GroupPrefix)
		if err := protocol.ValidateID(id); err != nil {
			s.log.Warn("hub group skipped: not a valid project id", "group", g.Name, "error", err)
			continue
		}
		roles := map[string]string{}
		for _, u := range g.Users {
			if _, ok := known[u]; ok {
				roles[u] = controlplane.RoleMember
				memberOf[u] = append(memberOf[u], id)
			}
		}
		for _, u := range append(slices.Clone(byName[g.Name+AdminsSuffix].Users), admins...) {
			if _, ok := known[u]; ok {
				roles[u] = controlplane.RoleAdmin
			}
		}
		p := controlplane.Project{ID: id, Members: []controlplane.Member{}}
		for u, r := range roles {
			p.Members = append(p.Members, controlplane.Member{User: u, Role: r})
		}
		slices.SortFunc(p.Members, func(a, b controlplane.Member) int { return strings.Compare(a.User, b.User) })
		d.Projects = append(d.Projects, p)
	}
	slices.SortFunc(d.Projects, func(a, b controlplane.Project) int { return strings.Compare(a.ID, b.ID) })
	hasProject := func(id string) bool {
		return slices.ContainsFunc(d.Projects, func(p controlplane.Project) bool { return p.ID == id })
	}
	for _, c := range s.opts.Communities {
		c.Admins = slices.DeleteFunc(slices.Clone(c.Admins), func(u string) bool {
			_, ok := known[u]
			if !ok {
				s.log.Debug("community admin not on the hub", "community", c.ID, "user", u)
			}
			return !ok
		})
		c.Projects = slices.DeleteFunc(slices.Clone(c.Projects), func(p string) bool { return !hasProject(p) })
		d.Communities = append(d.Communities, c)
	}
	now := s.opts.Now()
	s.pending = false
	for id, r := range s.regs {
		u, ok := known[r.User]
		if !ok {
			s.log.Info("workspace dropped: its user left the hub", "workspace", id, "user", r.User)
			delete(s.regs, id)
			s.regsGen++
			continue
		}
		if u.Servers != nil {
			if _, running := u.Servers[r.Server]; !running && now.Sub(r.At) > startGrace {
				s.log.Info("workspace dropped: the hub no longer lists its server", "workspace", id, "user", r.User, "server", r.Server)
				delete(s.regs, id)
				s.regsGen++
				continue
			} else if !running {
				s.pending = true
			}
		}
		projects := slices.Clone(memberOf[r.User])
		slices.Sort(projects)
		if projects == nil {
			projects = []string{}
		}
		d.Workspaces = append(d.Workspaces, controlplane.Workspace{ID: id, Owner: r.User, Projects: projects, CurveKey: r.CurveKey})
	}
	slices.SortFunc(d.Workspaces, func(a, b controlplane.Workspace) int { return strings.Compare(a.ID, b.ID) })
	return d
}

// Watch polls the hub until ctx ends and calls apply with each directory
// that differs from the last one applied (first the current one): the
// groups every Interval, the whole user list every UsersInterval, each
// in a loop of its own (a long read of the users does not hold up the
// groups). A failed poll or apply is logged and tried again, after a wait
// that doubles with each failure up to MaxBackoff; after a slow poll the
// next waits at least slowFactor (users: usersSlowFactor) times as long.
func (s *Source) Watch(ctx context.Context, apply func(*controlplane.Directory) error) {
	s.mu.Lock()
	s.apply = apply
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.apply = nil
		s.mu.Unlock()
	}()
	users := make(chan struct{})
	go func() { // owned by Watch: ends with ctx, waited for below
		defer close(users)
		s.follow(ctx, "users", pollUsersOnly, s.opts.UsersInterval, usersSlowFactor, s.opts.UsersInterval)
	}()
	s.follow(ctx, "groups", pollGroups, s.opts.Interval, slowFactor, 0) // the first poll reads both lists
	<-users
}

// follow refreshes with mode every interval until ctx ends, the first
// time after first.
func (s *Source) follow(ctx context.Context, what string, mode pollMode, interval time.Duration, factor int, first time.Duration) {
	timer := time.NewTimer(first)
	defer timer.Stop()
	failures := 0
	maxWait := max(s.opts.MaxBackoff, interval)
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		_, err := s.refresh(ctx, mode)
		s.mu.Lock()
		took := s.groupsTook // the hub's time, not the service's building
		if mode == pollUsersOnly {
			took = s.usersTook
		}
		s.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			failures++
		} else {
			failures = 0
		}
		wait := nextWait(interval, maxWait, failures, took*time.Duration(factor)/slowFactor)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("following the hub", "list", what, "error", err, "failures", failures, "next_poll", wait)
		case wait > interval:
			s.log.Debug("the hub is slow: polling it less often", "list", what, "poll_took", took, "next_poll", wait)
		}
		timer.Reset(wait)
	}
}

// nextWait is the wait before the next poll: interval, doubled for each
// failure in a row, or slowFactor times the last poll's duration if that
// is longer; never more than maxWait.
func nextWait(interval, maxWait time.Duration, failures int, took time.Duration) time.Duration {
	wait := interval
	if failures > 0 {
		wait = interval << min(failures, 16)
	}
	if slow := slowFactor * took; slow > wait {
		wait = slow
	}
	return min(wait, max(maxWait, interval))
}

// Refresh asks the hub now (groups and users) and applies the directory if
// it changed. It returns the directory in force.
func (s *Source) Refresh(ctx context.Context) (*controlplane.Directory, error) {
	return s.refresh(ctx, pollUsers)
}

// refresh asks the hub what mode says, and builds and applies the
// directory unless nothing it is built from has changed.
func (s *Source) refresh(ctx context.Context, mode pollMode) (*controlplane.Directory, error) {
	if err := s.fetch(ctx, mode); err != nil {
		return nil, err
	}
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	s.mu.Lock()
	in := inputs{users: s.usersSum, groups: s.groupsSum, regs: s.regsGen}
	if s.dir != nil && s.built == in && !s.pending {
		d := s.dir
		s.mu.Unlock()
		return d, nil // the hub's answer and the registrations are those of the directory in force
	}
	d := s.build(s.users, s.groups)
	in.regs = s.regsGen // build drops workspaces
	same, apply := false, s.apply
	s.mu.Unlock()
	data, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	s.mu.Lock()
	same = bytes.Equal(data, s.last)
	if same {
		s.built = in
		d = s.dir
	}
	s.mu.Unlock()
	if same {
		return d, nil
	}
	if apply == nil {
		return nil, errors.New("hub: the source is not being watched")
	}
	if err := apply(d); err != nil {
		return nil, fmt.Errorf("hub: applying the hub's directory: %w", err)
	}
	s.mu.Lock()
	s.last, s.dir, s.built = data, d, in
	s.mu.Unlock()
	s.log.Info("directory from the hub", "users", len(d.Users), "projects", len(d.Projects), "workspaces", len(d.Workspaces))
	return d, nil
}

// EnsureUser reads user, whom the hub has just vouched for, if the last
// user list lacks them (a user created since), and applies the directory.
// A failure is logged; the next poll of the users tries again.
func (s *Source) EnsureUser(ctx context.Context, user string) {
	s.mu.Lock()
	known := slices.ContainsFunc(s.users, func(u User) bool { return u.Name == user })
	watched := s.apply != nil
	s.mu.Unlock()
	if known || !watched {
		return
	}
	if err := s.addUsers(ctx, []string{user}); err != nil {
		s.log.Warn("reading a new user", "user", user, "error", err)
		return
	}
	if _, err := s.refresh(ctx, pollNone); err != nil {
		s.log.Warn("applying a new user", "user", user, "error", err)
	}
}

// Register adds or updates a workspace and applies the resulting
// directory (with the hub's answer of the last poll) before returning it,
// so that the workspace's records are written when its agent starts
// reading. A registration the directory in force already has (an agent's
// periodic one) changes nothing and returns that directory; one for a
// user the last user list lacks has the list read first.
func (s *Source) Register(ctx context.Context, r Registration) (*controlplane.Directory, error) {
	if !nkeys.IsValidPublicCurveKey(r.CurveKey) {
		return nil, errors.New("curve_key: not a curve public key (X...)")
	}
	s.mu.Lock()
	old, had := s.regs[r.Workspace]
	if r.At.IsZero() {
		r.At = s.opts.Now()
	}
	if had && s.dir != nil && old.User == r.User && old.Server == r.Server && old.CurveKey == r.CurveKey {
		if _, ok := s.dir.AccessOf(r.Workspace); ok {
			s.regs[r.Workspace] = r // a sign of life: the start grace counts from here
			d := s.dir
			s.mu.Unlock()
			return d, nil
		}
	}
	unknown := !slices.ContainsFunc(s.users, func(u User) bool { return u.Name == r.User })
	s.regs[r.Workspace] = r
	s.regsGen++
	s.mu.Unlock()
	if unknown {
		if err := s.addUsers(ctx, []string{r.User}); err != nil {
			s.log.Warn("reading a registering agent's user", "user", r.User, "error", err)
		}
	}
	// The hub's last answer is at most one poll old, and the registrar
	// asked the hub about the agent's token just now.
	d, err := s.refresh(ctx, pollNone)
	if err != nil {
		s.mu.Lock()
		if had {
			s.regs[r.Workspace] = old
		} else {
			delete(s.regs, r.Workspace)
		}
		s.regsGen++
		s.mu.Unlock()
		return nil, err
	}
	return d, nil
}

// communitiesFile is the service's own file of communities.
type communitiesFile struct {
	Communities []controlplane.Community `json:"communities"`
}

// LoadCommunities reads the communities file:
//
//	{"communities": [{"id": "research", "admins": ["alice"], "projects": ["ml"]}]}
//
// A missing file (path "") means none.
func LoadCommunities(path string) ([]controlplane.Community, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("communities: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, 1<<20))
	dec.DisallowUnknownFields()
	var cf communitiesFile
	if err := dec.Decode(&cf); err != nil {
		return nil, fmt.Errorf("communities: %s: %w", path, err)
	}
	for i, c := range cf.Communities {
		if err := protocol.ValidateID(c.ID); err != nil {
			return nil, fmt.Errorf("communities: %s: communities[%d].id: %w", path, i, err)
		}
	}
	return cf.Communities, nil
}
