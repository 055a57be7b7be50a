package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/web"
)

// The web UI of a dev instance: dev serves it on --ui-addr (default
// 127.0.0.1:0, a random loopback port; "" turns it off) and prints a
// one-time login URL at start; `nbsecrets ui` prints a new one. The login
// key, 32 random bytes in keys/ui-login.key (0600), signs login tokens: who
// can read it can log in as any user of the directory, as who can read
// keys/users/ can sign their requests.

const uiLoginKeyFile = "ui-login.key"

// uiFlags adds dev's web UI flags to fs.
func uiFlags(fs interface {
	String(name, value, usage string) *string
	Bool(name string, value bool, usage string) *bool
}) (addr, base *string, nonLoopback *bool) {
	addr = fs.String("ui-addr", envOr("NBSECRETS_UI_ADDR", "127.0.0.1:0"),
		"serve the web UI and HTTP API on this host:port (port 0: a free one; empty: off) ($NBSECRETS_UI_ADDR)")
	base = fs.String("ui-base", "/", "the path the web UI and API are served under")
	nonLoopback = fs.Bool("ui-non-loopback", false, "allow a --ui-addr that is not loopback (other hosts could reach the login page)")
	return addr, base, nonLoopback
}

// loadOrCreateLoginKey reads keys/ui-login.key, creating it when missing.
func loadOrCreateLoginKey(keysDir string) ([]byte, error) {
	path := filepath.Join(keysDir, uiLoginKeyFile)
	if b, err := os.ReadFile(path); err == nil {
		key, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(key) < 32 {
			return nil, fmt.Errorf("%s: not a hex key of 32 bytes or more", path)
		}
		return key, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading the login key: %w", err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	if err := os.MkdirAll(keysDir, 0o700); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing the login key: %w", err)
	}
	return key, nil
}

// webUI is a running web UI.
type webUI struct {
	URL     string // http://host:port/base/
	key     []byte
	h       *web.Server
	srv     *http.Server
	rollout *web.Rollout
	done    chan error
}

// startWebUI serves the web UI of svc on addr, with dev logins signed by
// keys/ui-login.key, and the rollout view fed from nc.
func startWebUI(svc *controlplane.Service, nc *nats.Conn, keysDir, addr, base string, nonLoopback bool, log hclog.Logger) (*webUI, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--ui-addr %q: %w", addr, err)
	}
	if !nonLoopback && !isLoopbackHost(host) {
		return nil, fmt.Errorf("--ui-addr %q is not a loopback address (add --ui-non-loopback to allow it)", addr)
	}
	key, err := loadOrCreateLoginKey(keysDir)
	if err != nil {
		return nil, err
	}
	login, err := web.NewDevLogin(key, log, nil)
	if err != nil {
		return nil, err
	}
	rollout, err := web.StartRollout(nc, log)
	if err != nil {
		return nil, err
	}
	h, err := web.New(web.Options{Service: svc, Auth: login, BasePath: base, Rollout: rollout, Logger: log})
	if err != nil {
		_ = rollout.Stop()
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		_ = rollout.Stop()
		return nil, fmt.Errorf("web UI: %w", err)
	}
	u := &webUI{URL: "http://" + l.Addr().String() + h.Base(), key: key, h: h, rollout: rollout, done: make(chan error, 1),
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}}
	go func() { u.done <- u.srv.Serve(l) }() // owned by u: stop ends it
	log.Info("web UI serving", "url", u.URL)
	return u, nil
}

// loginURL is a one-time login URL for user.
func (u *webUI) loginURL(user string) (string, error) {
	tok, err := web.MintLoginToken(u.key, user, time.Now())
	if err != nil {
		return "", err
	}
	return u.URL + "login?token=" + url.QueryEscape(tok), nil
}

// stop shuts the server down and ends the rollout subscription.
func (u *webUI) stop() error {
	u.h.Close() // ends the event streams, which Shutdown would wait for
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := u.srv.Shutdown(ctx)
	if serr := <-u.done; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return errors.Join(err, u.rollout.Stop())
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// runUI is `nbsecrets ui`: a one-time login URL for the dev instance's web
// UI, like `jupyter server list`.
func runUI(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "ui", "[--state-dir DIR] [--as USER]")
	stateDir := stateDirFlag(fs)
	as := fs.String("as", "", "log in as this user of the directory (default: the instance's user)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return errUsage
	}
	dir, err := filepath.Abs(*stateDir)
	if err != nil {
		return err
	}
	info, err := readDevInfo(dir)
	if err != nil {
		return err
	}
	if !processAlive(info.PID) {
		return fmt.Errorf("the instance in %s (pid %d) is not running", dir, info.PID)
	}
	if info.UIURL == "" {
		return fmt.Errorf("the instance in %s serves no web UI (started with --ui-addr \"\")", dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, "keys", uiLoginKeyFile))
	if err != nil {
		return fmt.Errorf("reading the login key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("reading the login key: %w", err)
	}
	user := *as
	if user == "" {
		user = info.User
	}
	tok, err := web.MintLoginToken(key, user, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%slogin?token=%s\n", info.UIURL, url.QueryEscape(tok))
	fmt.Fprintf(env.stderr, "Open this URL as %s within %v; it works once.\n", user, web.LoginTokenTTL)
	return nil
}
