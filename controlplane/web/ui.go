package web

import (
	"bytes"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// The pages, server-rendered from templates/ with the seeds' words:
//
//	GET       /                       the list; New Secret
//	GET, POST new                     New Secret: Name, Value, Private or Project -> Create
//	GET       secrets/{id}            the info page, with the live rollout
//	GET, POST secrets/{id}/access     Access: share per community (a community admin)
//	GET, POST secrets/{id}/edit       Edit: name and content -> Save
//	GET, POST secrets/{id}/clone      Clone: name and content -> Create
//	POST      secrets/{id}/delete     Delete -> "Secret destroyed"
//	GET       login?token=            a one-time login (DevLogin)
//	POST      logout
//	GET       static/...              app.js (name checks, rollout), app.css
//
// A value field is write-only: no page ever holds a stored value.

type pages struct {
	t map[string]*template.Template
}

var pageNames = []string{"list", "new", "secret", "access", "edit", "clone", "destroyed", "message"}

func newPages(s *Server) (*pages, error) {
	funcs := template.FuncMap{
		"base": func() string { return s.base },
		"when": func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.UTC().Format("2006-01-02 15:04:05 UTC")
		},
		"scope": scopeLabel,
	}
	p := &pages{t: map[string]*template.Template{}}
	for _, n := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/"+n+".html")
		if err != nil {
			return nil, err
		}
		p.t[n] = t
	}
	return p, nil
}

// scopeLabel shows a scope as the seeds do: Private, or Project <id>.
func scopeLabel(sc protocol.Scope) string {
	switch sc.Kind {
	case protocol.ScopeUser:
		return "Private (" + sc.ID + ")"
	case protocol.ScopeProject:
		return "Project " + sc.ID
	case protocol.ScopeCommunity:
		return "Community " + sc.ID
	}
	return sc.String()
}

// view is what every page gets.
type view struct {
	Title   string
	User    string
	CSRF    string
	Error   string
	Profile controlplane.Profile
	Secret  *controlplane.SecretInfo
	Secrets []controlplane.SecretInfo
	Form    form
	Tab     string
	Shared  map[string]bool
	Message string
}

// form holds what a user typed, except the value, which is never sent back.
type form struct {
	Name, Scope, Project, Community string
	Version                         uint64
}

func (s *Server) render(w http.ResponseWriter, status int, name string, v *view) {
	var buf bytes.Buffer
	if err := s.pages.t[name].Execute(&buf, v); err != nil {
		s.log.Error("rendering page", "page", name, "error", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (s *Server) uiRoutes() {
	static := http.StripPrefix(s.base+"static/", http.FileServerFS(staticFS()))
	s.handle("GET", "/static/", false, static.ServeHTTP)
	if lh, ok := s.auth.(LoginHandler); ok {
		s.handle("GET", "/login", false, func(w http.ResponseWriter, r *http.Request) {
			lh.Login(w, r, r.TLS != nil, s.base, s.base)
		})
		s.handle("POST", "/logout", false, s.page(func(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) {
			lh.Logout(w, r, s.base)
			s.render(w, http.StatusOK, "message", &view{Title: "Logged out", Message: "Logged out."})
		}))
	}
	s.handle("GET", "/", false, s.page(func(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) {
		list, err := c.List(r.Context())
		if err != nil {
			s.pageError(w, v, err)
			return
		}
		v.Title, v.Secrets = "Secrets", list
		s.render(w, http.StatusOK, "list", v)
	}))
	s.handle("GET", "/new", false, s.page(func(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) {
		v.Title, v.Form.Scope = "New Secret", "private"
		s.render(w, http.StatusOK, "new", v)
	}))
	s.handle("POST", "/new", false, s.page(func(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) {
		v.Title = "New Secret"
		v.Form = formOf(r)
		value := []byte(r.PostFormValue("value"))
		defer clear(value)
		project, err := projectOf(v.Form)
		var info *controlplane.SecretInfo
		if err == nil {
			info, err = c.Create(r.Context(), controlplane.Args{Name: v.Form.Name, Project: project}, value)
		}
		if err != nil {
			s.formError(w, "new", v, err)
			return
		}
		http.Redirect(w, r, s.base+"secrets/"+url.PathEscape(info.ID), http.StatusSeeOther)
	}))
	s.handle("GET", "/secrets/{id}", false, s.secretPage("secret", "info"))
	s.handle("GET", "/secrets/{id}/access", false, s.secretPage("access", "access"))
	s.handle("GET", "/secrets/{id}/edit", false, s.secretPage("edit", "edit"))
	s.handle("GET", "/secrets/{id}/clone", false, s.secretPage("clone", "clone"))
	s.handle("POST", "/secrets/{id}/edit", false, s.page(func(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) {
		if !s.loadSecret(w, r, c, v) {
			return
		}
		v.Title, v.Tab, v.Form = "Edit "+v.Secret.Name, "edit", formOf(r)
		var value []byte
		if nv := r.PostFormValue("value"); nv != "" {
			value = []byte(nv)
			defer clear(value)
		}
		info, err := s.update(r.Context(), c, v.Secret.ID, changeArgs{Name: v.Form.Name, Value: value, Version: v.Form.Version})
		if err != nil {
			s.formError(w, "edit", v, err)
			return
		}
		http.Redirect(w, r, s.base+"secrets/"+url.PathEscape(info.ID), http.StatusSeeOther)
	}))
	s.handle("POST", "/secrets/{id}/clone", false, s.page(func(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) {
		if !s.loadSecret(w, r, c, v) {
			return
		}
		v.Title, v.Tab, v.Form = "Clone "+v.Secret.Name, "clone", formOf(r)
		var value []byte
		if nv := r.PostFormValue("value"); nv != "" {
			value = []byte(nv)
			defer clear(value)
		}
		project, err := projectOf(v.Form)
		var info *controlplane.SecretInfo
		if err == nil {
			info, err = s.clone(r.Context(), c, v.Secret.ID, changeArgs{Name: v.Form.Name, Value: value, Project: project})
		}
		if err != nil {
			s.formError(w, "clone", v, err)
			return
		}
		http.Redirect(w, r, s.base+"secrets/"+url.PathEscape(info.ID), http.StatusSeeOther)
	}))
	s.handle("POST", "/secrets/{id}/delete", false, s.page(func(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) {
		if !s.loadSecret(w, r, c, v) {
			return
		}
		v.Form = formOf(r)
		info, err := s.remove(r.Context(), c, v.Secret.ID, v.Form.Version)
		if err != nil {
			v.Title = v.Secret.Name
			s.formError(w, "secret", v, err)
			return
		}
		v.Title, v.Secret = "Secret destroyed", info
		s.render(w, http.StatusOK, "destroyed", v)
	}))
	s.handle("POST", "/secrets/{id}/access", false, s.page(func(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) {
		if !s.loadSecret(w, r, c, v) {
			return
		}
		v.Title, v.Tab, v.Form = "Access: "+v.Secret.Name, "access", formOf(r)
		on := r.PostFormValue("share") == "on"
		info, err := s.setShared(r.Context(), c, v.Secret.ID, v.Form.Community, on)
		if err != nil {
			v.Shared = sharedSet(v.Secret)
			s.formError(w, "access", v, err)
			return
		}
		v.Secret, v.Shared = info, sharedSet(info)
		http.Redirect(w, r, s.base+"secrets/"+url.PathEscape(info.ID)+"/access", http.StatusSeeOther)
	}))
}

// page adapts a page handler: authentication, and for a POST the form
// (bounded) and its CSRF token.
func (s *Server) page(fn func(http.ResponseWriter, *http.Request, *controlplane.Caller, *view)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		csrf := ""
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			if err := r.ParseForm(); err != nil {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					s.render(w, http.StatusRequestEntityTooLarge, "message", &view{Title: "Too large", Error: "The form is larger than the service accepts."})
					return
				}
				s.render(w, http.StatusBadRequest, "message", &view{Title: "Bad request", Error: "The form could not be read."})
				return
			}
			csrf = r.PostFormValue("csrf")
		}
		c, id, err := s.caller(r, csrf)
		if err != nil {
			ae := toAPIError(err)
			msg := ae.Message
			if ae.Code == "unauthenticated" {
				msg = "You are not logged in. Run `nbsecrets ui` and open the URL it prints."
			}
			s.render(w, ae.status, "message", &view{Title: "Not allowed", Error: msg})
			return
		}
		fn(w, r, c, &view{User: id.User, CSRF: id.CSRF, Profile: c.Profile()})
	}
}

// secretPage renders a page about one secret.
func (s *Server) secretPage(name, tab string) http.HandlerFunc {
	return s.page(func(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) {
		if !s.loadSecret(w, r, c, v) {
			return
		}
		v.Tab, v.Title = tab, v.Secret.Name
		v.Form = form{Name: v.Secret.Name, Scope: "private", Version: v.Secret.Version}
		switch tab {
		case "clone":
			v.Form.Name = v.Secret.Name + "_COPY"
		case "access":
			v.Shared = sharedSet(v.Secret)
		}
		s.render(w, http.StatusOK, name, v)
	})
}

func (s *Server) loadSecret(w http.ResponseWriter, r *http.Request, c *controlplane.Caller, v *view) bool {
	info, err := find(r.Context(), c, r.PathValue("id"))
	if err != nil {
		s.pageError(w, v, err)
		return false
	}
	v.Secret = info
	return true
}

func sharedSet(info *controlplane.SecretInfo) map[string]bool {
	m := map[string]bool{}
	for _, c := range info.Communities {
		m[c] = true
	}
	return m
}

func (s *Server) pageError(w http.ResponseWriter, v *view, err error) {
	ae := toAPIError(err)
	v.Title, v.Error = "Error", ae.Message
	s.render(w, ae.status, "message", v)
}

// formError shows a form again with the service's refusal; the value field
// stays empty.
func (s *Server) formError(w http.ResponseWriter, page string, v *view, err error) {
	ae := toAPIError(err)
	s.log.Info("form refused", "page", page, "user", v.User, "code", ae.Code)
	v.Error = ae.Message
	s.render(w, ae.status, page, v)
}

func formOf(r *http.Request) form {
	f := form{Name: strings.TrimSpace(r.PostFormValue("name")), Scope: r.PostFormValue("scope"),
		Project: r.PostFormValue("project"), Community: strings.TrimSpace(r.PostFormValue("community"))}
	f.Version, _ = strconv.ParseUint(r.PostFormValue("version"), 10, 64)
	return f
}

// projectOf is the project a New Secret or Clone form chose, "" for
// Private.
func projectOf(f form) (string, error) {
	switch f.Scope {
	case "private", "":
		return "", nil
	case "project":
		if f.Project == "" {
			return "", newError("invalid", "Project: choose which project")
		}
		return f.Project, nil
	}
	return "", newError("invalid", "choose Private or Project")
}
