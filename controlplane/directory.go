package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// maxDirectorySize bounds a directory file.
const maxDirectorySize = 16 << 20

// Directory is who exists and who belongs where: the users, projects,
// communities and workspaces the service serves. Its JSON form is the
// directory file (see the package documentation and
// deploy/directory.example.json).
type Directory struct {
	Users       []User      `json:"users"`
	Projects    []Project   `json:"projects"`
	Communities []Community `json:"communities"`
	Workspaces  []Workspace `json:"workspaces"`
	Comment     string      `json:"//,omitempty"` // free text, ignored: a note in the file
}

// User is a person. PublicKey is the user's ed25519 user nkey ("U..."): the
// service accepts a request from the user only when it is signed by it.
type User struct {
	ID        string `json:"id"`
	PublicKey string `json:"publicKey"`
	Comment   string `json:"//,omitempty"` // free text, ignored: a note in the file
}

// Project is a group of users; its secrets reach every workspace that lists
// the project.
type Project struct {
	ID      string   `json:"id"`
	Members []Member `json:"members"`
	Comment string   `json:"//,omitempty"` // free text, ignored: a note in the file
}

// Member is a user's role in a project: RoleAdmin or RoleMember.
type Member struct {
	User string `json:"user"`
	Role string `json:"role"`
}

// The roles of a project member. Any member may create a project secret;
// a project admin, or the member who created the secret, may update,
// rename, delete or share it.
const (
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// Community is a group of projects with its own admins. Only an admin may
// share a secret with it or withdraw one; a shared secret reaches every
// workspace of the community's projects.
type Community struct {
	ID       string   `json:"id"`
	Admins   []string `json:"admins"`
	Projects []string `json:"projects"`
	Comment  string   `json:"//,omitempty"` // free text, ignored: a note in the file
}

// Workspace is where kernels run, served by one agent. It receives its
// owner's private secrets, the secrets of the projects it lists and those
// shared with the communities of those projects, sealed to CurveKey, its
// curve public key ("X...").
type Workspace struct {
	ID       string   `json:"id"`
	Owner    string   `json:"owner"`
	Projects []string `json:"projects"`
	CurveKey string   `json:"curveKey"`
	Comment  string   `json:"//,omitempty"` // free text, ignored: a note in the file
}

// LoadDirectory reads and checks a directory file. Unknown fields are
// refused (a misspelt "member" would otherwise silently drop a person), and
// every error names the field at fault, as in
// `directory: workspaces[1].projects[0]: unknown project "ml2"`.
func LoadDirectory(path string) (*Directory, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	defer f.Close()
	d, err := DecodeDirectory(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// DecodeDirectory parses a directory file's JSON strictly (no unknown
// fields, nothing after the object) without checking its content; see
// Validate. nbsecrets dev uses it to fill in keys it generates.
func DecodeDirectory(r io.Reader) (*Directory, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxDirectorySize+1))
	if err != nil {
		return nil, fmt.Errorf("directory: reading: %w", err)
	}
	if len(data) > maxDirectorySize {
		return nil, fmt.Errorf("directory: larger than %d bytes", maxDirectorySize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d Directory
	if err := dec.Decode(&d); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			return nil, fmt.Errorf("directory: line %d: %w", line, err)
		}
		return nil, fmt.Errorf("directory: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("directory: data after the JSON object")
	}
	return &d, nil
}

// Validate checks d: every id valid and unique, every reference known,
// every key of the right kind. The error names the field at fault.
func (d *Directory) Validate() error {
	_, err := newDirectory(d)
	return err
}

// Access is what one workspace may receive under a directory, as its agent
// must be configured to check it (agent.Workspace; nbsecrets agent --owner,
// --projects, --communities).
type Access struct {
	Owner string
	// Projects are the workspace's projects that its owner is a member of:
	// a project the owner left no longer reaches the workspace.
	Projects []string
	// Communities are those holding one of Projects, sorted: their shared
	// secrets reach the workspace.
	Communities []string
}

// AccessOf returns what workspace ws may receive, false if d has no such
// workspace. d need not be valid.
func (d *Directory) AccessOf(ws string) (Access, bool) {
	for _, w := range d.Workspaces {
		if w.ID != ws {
			continue
		}
		a := Access{Owner: w.Owner}
		for _, p := range d.Projects {
			if slices.Contains(w.Projects, p.ID) && slices.ContainsFunc(p.Members, func(m Member) bool { return m.User == w.Owner }) {
				a.Projects = append(a.Projects, p.ID)
			}
		}
		slices.Sort(a.Projects)
		a.Projects = slices.Compact(a.Projects)
		for _, c := range d.Communities {
			if slices.ContainsFunc(c.Projects, func(p string) bool { return slices.Contains(a.Projects, p) }) {
				a.Communities = append(a.Communities, c.ID)
			}
		}
		slices.Sort(a.Communities)
		a.Communities = slices.Compact(a.Communities)
		return a, true
	}
	return Access{}, false
}

// directory is a checked Directory with its lookups. It is never changed
// once made: SetDirectory swaps in a new one. Its workspaces list only the
// projects their owners are members of.
type directory struct {
	users       map[string]nkeys.KeyPair     // user -> public key
	roles       map[string]map[string]string // project -> user -> role
	communities map[string]Community
	workspaces  []Workspace // sorted by ID
}

// newDirectory checks d and builds its lookups.
func newDirectory(d *Directory) (*directory, error) {
	if d == nil {
		return nil, fmt.Errorf("%w: no directory", ErrInvalid)
	}
	x := &directory{
		users:       make(map[string]nkeys.KeyPair),
		roles:       make(map[string]map[string]string),
		communities: make(map[string]Community),
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("directory: "+format, args...)
	}
	for i, u := range d.Users {
		if err := protocol.ValidateID(u.ID); err != nil {
			return nil, bad("users[%d].id: %w", i, err)
		}
		if _, dup := x.users[u.ID]; dup {
			return nil, bad("users[%d].id: user %s listed twice", i, u.ID)
		}
		if !nkeys.IsValidPublicUserKey(u.PublicKey) {
			return nil, bad("users[%d].publicKey: user %s: not an ed25519 user nkey (U...)", i, u.ID)
		}
		kp, err := nkeys.FromPublicKey(u.PublicKey)
		if err != nil {
			return nil, bad("users[%d].publicKey: user %s: %w", i, u.ID, err)
		}
		x.users[u.ID] = kp
	}
	for i, p := range d.Projects {
		if err := protocol.ValidateID(p.ID); err != nil {
			return nil, bad("projects[%d].id: %w", i, err)
		}
		if _, dup := x.roles[p.ID]; dup {
			return nil, bad("projects[%d].id: project %s listed twice", i, p.ID)
		}
		roles := make(map[string]string)
		for j, m := range p.Members {
			if _, ok := x.users[m.User]; !ok {
				return nil, bad("projects[%d].members[%d].user: project %s: unknown user %q", i, j, p.ID, m.User)
			}
			if _, dup := roles[m.User]; dup {
				return nil, bad("projects[%d].members[%d].user: project %s: %s listed twice", i, j, p.ID, m.User)
			}
			if m.Role != RoleAdmin && m.Role != RoleMember {
				return nil, bad("projects[%d].members[%d].role: project %s: member %s: role %q is neither %q nor %q", i, j, p.ID, m.User, m.Role, RoleAdmin, RoleMember)
			}
			roles[m.User] = m.Role
		}
		x.roles[p.ID] = roles
	}
	for i, c := range d.Communities {
		if err := protocol.ValidateID(c.ID); err != nil {
			return nil, bad("communities[%d].id: %w", i, err)
		}
		if _, dup := x.communities[c.ID]; dup {
			return nil, bad("communities[%d].id: community %s listed twice", i, c.ID)
		}
		for j, a := range c.Admins {
			if _, ok := x.users[a]; !ok {
				return nil, bad("communities[%d].admins[%d]: community %s: unknown user %q", i, j, c.ID, a)
			}
		}
		for j, p := range c.Projects {
			if _, ok := x.roles[p]; !ok {
				return nil, bad("communities[%d].projects[%d]: community %s: unknown project %q", i, j, c.ID, p)
			}
		}
		c.Admins, c.Projects = slices.Clone(c.Admins), slices.Clone(c.Projects)
		x.communities[c.ID] = c
	}
	seen := make(map[string]bool)
	for i, w := range d.Workspaces {
		if err := protocol.ValidateID(w.ID); err != nil {
			return nil, bad("workspaces[%d].id: %w", i, err)
		}
		if seen[w.ID] {
			return nil, bad("workspaces[%d].id: workspace %s listed twice", i, w.ID)
		}
		seen[w.ID] = true
		if _, ok := x.users[w.Owner]; !ok {
			return nil, bad("workspaces[%d].owner: workspace %s: unknown user %q", i, w.ID, w.Owner)
		}
		for j, p := range w.Projects {
			if _, ok := x.roles[p]; !ok {
				return nil, bad("workspaces[%d].projects[%d]: workspace %s: unknown project %q", i, j, w.ID, p)
			}
		}
		if !nkeys.IsValidPublicCurveKey(w.CurveKey) {
			return nil, bad("workspaces[%d].curveKey: workspace %s: not a curve public key (X...)", i, w.ID)
		}
		// A project reaches the workspace only while its owner is a member.
		w.Projects = slices.DeleteFunc(slices.Clone(w.Projects), func(p string) bool {
			_, member := x.roles[p][w.Owner]
			return !member
		})
		x.workspaces = append(x.workspaces, w)
	}
	slices.SortFunc(x.workspaces, func(a, b Workspace) int { return strings.Compare(a.ID, b.ID) })
	return x, nil
}

// scopesOf are the scopes whose secrets user may change, in order of
// precedence: the user's own, then each project the user is a member of, by
// id.
func (d *directory) scopesOf(user string) []protocol.Scope {
	scopes := []protocol.Scope{{Kind: protocol.ScopeUser, ID: user}}
	var projects []string
	for p, roles := range d.roles {
		if _, ok := roles[user]; ok {
			projects = append(projects, p)
		}
	}
	slices.Sort(projects)
	for _, p := range projects {
		scopes = append(scopes, protocol.Scope{Kind: protocol.ScopeProject, ID: p})
	}
	return scopes
}

// communitiesOf are the communities whose shared secrets user sees: those
// holding a project the user is a member of, and those the user
// administers. Sorted.
func (d *directory) communitiesOf(user string) []protocol.Scope {
	var out []protocol.Scope
	for id, c := range d.communities {
		if slices.Contains(c.Admins, user) || slices.ContainsFunc(c.Projects, func(p string) bool {
			_, ok := d.roles[p][user]
			return ok
		}) {
			out = append(out, protocol.Scope{Kind: protocol.ScopeCommunity, ID: id})
		}
	}
	slices.SortFunc(out, func(a, b protocol.Scope) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// mayCreate reports why user may not create a secret in scope, or nil.
func (d *directory) mayCreate(user string, scope protocol.Scope) error {
	switch scope.Kind {
	case protocol.ScopeUser:
		if scope.ID == user {
			return nil
		}
	case protocol.ScopeProject:
		if _, ok := d.roles[scope.ID][user]; ok {
			return nil
		}
		return fmt.Errorf("%w: %s is not a member of project %q (only members create its secrets)", ErrForbidden, user, scope.ID)
	}
	return fmt.Errorf("%w: %s may not create secrets in %s", ErrForbidden, user, scope)
}

// mayWrite reports why user may not change (update, rename, delete, share)
// a secret of scope that creator created, or nil: a private secret only by
// its owner, a project secret by a project admin or by the member who
// created it. Nobody changes a secret through a community share.
func (d *directory) mayWrite(user string, scope protocol.Scope, creator string) error {
	switch scope.Kind {
	case protocol.ScopeUser:
		if scope.ID == user {
			return nil
		}
	case protocol.ScopeProject:
		switch role, ok := d.roles[scope.ID][user]; {
		case ok && role == RoleAdmin, ok && creator == user:
			return nil
		case ok:
			return fmt.Errorf("%w: only a project admin or its creator may change a secret of project %q", ErrForbidden, scope.ID)
		}
	}
	return fmt.Errorf("%w: %s may not change secrets of %s", ErrForbidden, user, scope)
}

// mayAdminister reports why user may not share with or unshare from
// community c, or nil.
func (d *directory) mayAdminister(user, community string) error {
	c, ok := d.communities[community]
	if !ok {
		return fmt.Errorf("%w: no community %q", ErrNotFound, community)
	}
	if !slices.Contains(c.Admins, user) {
		return fmt.Errorf("%w: only an admin of community %q may share secrets with it or withdraw them; %s is not one", ErrForbidden, community, user)
	}
	return nil
}

// recipients are the workspaces that receive a secret of scope, by id.
func (d *directory) recipients(scope protocol.Scope) []Workspace {
	var out []Workspace
	for _, w := range d.workspaces {
		switch scope.Kind {
		case protocol.ScopeUser:
			if w.Owner == scope.ID {
				out = append(out, w)
			}
		case protocol.ScopeProject:
			if slices.Contains(w.Projects, scope.ID) {
				out = append(out, w)
			}
		case protocol.ScopeCommunity:
			c, ok := d.communities[scope.ID]
			if ok && slices.ContainsFunc(w.Projects, func(p string) bool { return slices.Contains(c.Projects, p) }) {
				out = append(out, w)
			}
		}
	}
	return out
}

// workspace returns the workspace with id.
func (d *directory) workspace(id string) (Workspace, bool) {
	i, ok := slices.BinarySearchFunc(d.workspaces, id, func(w Workspace, id string) int { return strings.Compare(w.ID, id) })
	if !ok {
		return Workspace{}, false
	}
	return d.workspaces[i], true
}
