package controlplane

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// Directory is who exists and who belongs where: the users, projects,
// communities and workspaces the service serves. Issue 3's service reads it
// once, in New; a later one will load it from the platform.
type Directory struct {
	Users       []User      `json:"users"`
	Projects    []Project   `json:"projects"`
	Communities []Community `json:"communities"`
	Workspaces  []Workspace `json:"workspaces"`
}

// User is a person. PublicKey is the user's ed25519 user nkey ("U..."): the
// service accepts a request from the user only when it is signed by it.
type User struct {
	ID        string `json:"id"`
	PublicKey string `json:"publicKey"`
}

// Project is a group of users; its secrets reach every workspace that lists
// the project.
type Project struct {
	ID      string   `json:"id"`
	Members []Member `json:"members"`
}

// Member is a user's role in a project: RoleAdmin or RoleMember.
type Member struct {
	User string `json:"user"`
	Role string `json:"role"`
}

// The roles of a project member. Any member may create a project secret;
// a project admin, or the member who created the secret, may update or
// delete it.
const (
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// Community is a group of projects with its own admins. Its secrets reach
// every workspace of its projects (issue 4: nothing creates them yet).
type Community struct {
	ID       string   `json:"id"`
	Admins   []string `json:"admins"`
	Projects []string `json:"projects"`
}

// Workspace is where kernels run, served by one agent. It receives its
// owner's private secrets and the secrets of the projects it lists, sealed
// to CurveKey, its curve public key ("X...").
type Workspace struct {
	ID       string   `json:"id"`
	Owner    string   `json:"owner"`
	Projects []string `json:"projects"`
	CurveKey string   `json:"curveKey"`
}

// directory is a checked Directory with its lookups.
type directory struct {
	users       map[string]nkeys.KeyPair     // user -> public key
	roles       map[string]map[string]string // project -> user -> role
	communities map[string]Community
	workspaces  []Workspace // sorted by ID
}

// newDirectory checks d: every id valid and unique, every reference known,
// every key of the right kind.
func newDirectory(d *Directory) (*directory, error) {
	if d == nil {
		return nil, fmt.Errorf("%w: no directory", ErrInvalid)
	}
	x := &directory{
		users:       make(map[string]nkeys.KeyPair),
		roles:       make(map[string]map[string]string),
		communities: make(map[string]Community),
	}
	for _, u := range d.Users {
		if err := protocol.ValidateID(u.ID); err != nil {
			return nil, fmt.Errorf("directory: user: %w", err)
		}
		if _, dup := x.users[u.ID]; dup {
			return nil, fmt.Errorf("directory: user %s listed twice", u.ID)
		}
		if !nkeys.IsValidPublicUserKey(u.PublicKey) {
			return nil, fmt.Errorf("directory: user %s: public key is not an ed25519 user nkey (U...)", u.ID)
		}
		kp, err := nkeys.FromPublicKey(u.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("directory: user %s: %w", u.ID, err)
		}
		x.users[u.ID] = kp
	}
	for _, p := range d.Projects {
		if err := protocol.ValidateID(p.ID); err != nil {
			return nil, fmt.Errorf("directory: project: %w", err)
		}
		if _, dup := x.roles[p.ID]; dup {
			return nil, fmt.Errorf("directory: project %s listed twice", p.ID)
		}
		roles := make(map[string]string)
		for _, m := range p.Members {
			if _, ok := x.users[m.User]; !ok {
				return nil, fmt.Errorf("directory: project %s: unknown member %q", p.ID, m.User)
			}
			if m.Role != RoleAdmin && m.Role != RoleMember {
				return nil, fmt.Errorf("directory: project %s: member %s: role %q is neither %q nor %q", p.ID, m.User, m.Role, RoleAdmin, RoleMember)
			}
			roles[m.User] = m.Role
		}
		x.roles[p.ID] = roles
	}
	for _, c := range d.Communities {
		if err := protocol.ValidateID(c.ID); err != nil {
			return nil, fmt.Errorf("directory: community: %w", err)
		}
		if _, dup := x.communities[c.ID]; dup {
			return nil, fmt.Errorf("directory: community %s listed twice", c.ID)
		}
		for _, a := range c.Admins {
			if _, ok := x.users[a]; !ok {
				return nil, fmt.Errorf("directory: community %s: unknown admin %q", c.ID, a)
			}
		}
		for _, p := range c.Projects {
			if _, ok := x.roles[p]; !ok {
				return nil, fmt.Errorf("directory: community %s: unknown project %q", c.ID, p)
			}
		}
		x.communities[c.ID] = c
	}
	seen := make(map[string]bool)
	for _, w := range d.Workspaces {
		if err := protocol.ValidateID(w.ID); err != nil {
			return nil, fmt.Errorf("directory: workspace: %w", err)
		}
		if seen[w.ID] {
			return nil, fmt.Errorf("directory: workspace %s listed twice", w.ID)
		}
		seen[w.ID] = true
		if _, ok := x.users[w.Owner]; !ok {
			return nil, fmt.Errorf("directory: workspace %s: unknown owner %q", w.ID, w.Owner)
		}
		for _, p := range w.Projects {
			if _, ok := x.roles[p]; !ok {
				return nil, fmt.Errorf("directory: workspace %s: unknown project %q", w.ID, p)
			}
		}
		if !nkeys.IsValidPublicCurveKey(w.CurveKey) {
			return nil, fmt.Errorf("directory: workspace %s: curve key is not a curve public key (X...)", w.ID)
		}
		w.Projects = slices.Clone(w.Projects)
		x.workspaces = append(x.workspaces, w)
	}
	slices.SortFunc(x.workspaces, func(a, b Workspace) int { return strings.Compare(a.ID, b.ID) })
	return x, nil
}

// scopesOf are the scopes whose secrets user sees, in order of precedence:
// the user's own, then each project the user is a member of, by id.
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
		return fmt.Errorf("%w: %s is not a member of project %q", ErrForbidden, user, scope.ID)
	}
	return fmt.Errorf("%w: %s may not create secrets in %s", ErrForbidden, user, scope)
}

// mayWrite reports why user may not update or delete a secret of scope that
// creator created, or nil: a private secret only by its owner, a project
// secret by a project admin or by the member who created it.
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
			c := d.communities[scope.ID]
			if slices.ContainsFunc(w.Projects, func(p string) bool { return slices.Contains(c.Projects, p) }) {
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
