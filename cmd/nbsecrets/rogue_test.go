package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
)

// TestRogueResponderCannotDriveTheTerminal performs issue 9's finding 7: a
// process that answers on the service's subject instead of the service
// replies with terminal escape sequences (clear the screen, retitle the
// window, forge a line) in the error message, the secret's name and its
// ids. The CLI prints none of them: a malformed name or id is refused as a
// malformed reply, and an error message is shown with its control
// characters blanked.
func TestRogueResponderCannotDriveTheTerminal(t *testing.T) {
	srv := natstest.Start(t)
	dir := t.TempDir()
	if _, _, err := keyfile.LoadOrCreate(filepath.Join(dir, "keys", "users", "alice.nk"), false, nkeys.PrefixByteUser); err != nil {
		t.Fatal(err)
	}
	curve, err := nkeys.CreateCurveKeys()
	if err != nil {
		t.Fatal(err)
	}
	sealPub, _ := curve.PublicKey()
	sign, _ := nkeys.CreateAccount()
	signPub, _ := sign.PublicKey()
	in := &secretInstance{dir: dir}
	in.writeInfo(t, devInfo{PID: os.Getpid(), NATSURL: srv.ClientURL(), Workspace: "ws1", User: "alice", SignKey: signPub, SealKey: sealPub})

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	const esc = "\x1b[2J\x1b]0;owned\x07\u009b31m\r\nUpdated secret DB_PASSWORD (version 999)\u202e"
	replies := map[string]string{
		"error":   `{"error":{"code":"forbidden","message":"nope ` + jsonText(esc) + `"}}`,
		"name":    `{"secret":{"id":"abc","name":"X` + jsonText(esc) + `","scope":{"kind":"user","id":"alice"},"version":999,"updated_at":"2026-01-01T00:00:00Z","updated_by":"alice","editable":true}}`,
		"id":      `{"secret":{"id":"abc` + jsonText(esc) + `","name":"DB_PASSWORD","scope":{"kind":"user","id":"alice"},"version":999,"updated_at":"2026-01-01T00:00:00Z","updated_by":"alice","editable":true}}`,
		"scope":   `{"secret":{"id":"abc","name":"DB_PASSWORD","scope":{"kind":"user","id":"alice` + jsonText(esc) + `"},"version":999,"updated_at":"2026-01-01T00:00:00Z","updated_by":"alice","editable":true}}`,
		"by":      `{"secret":{"id":"abc","name":"DB_PASSWORD","scope":{"kind":"user","id":"alice"},"version":999,"updated_at":"2026-01-01T00:00:00Z","updated_by":"` + jsonText(esc) + `","editable":true}}`,
		"listing": `{"secrets":[{"id":"abc","name":"DB_PASSWORD","scope":{"kind":"user","id":"alice"},"version":1,"updated_at":"2026-01-01T00:00:00Z","updated_by":"alice","editable":true,"communities":["c` + jsonText(esc) + `"]}]}`,
	}
	for what, body := range replies {
		t.Run(what, func(t *testing.T) {
			sub, err := nc.Subscribe(controlplane.SubjectPrefix+"*", func(m *nats.Msg) { _ = m.Respond([]byte(body)) })
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			args := []string{"update", "DB_PASSWORD", "--as", "alice"}
			if what == "listing" {
				args = []string{"list", "--as", "alice"}
			}
			code, stdout, stderr := in.run("new-value", args...)
			out := stdout + stderr
			if code == 0 {
				t.Errorf("exit 0 on a forged reply; output %q", out)
			}
			if i := strings.IndexFunc(out, func(r rune) bool { return r < ' ' && r != '\n' || r == 0x7f || r >= 0x80 && r < 0xa0 || r == '\u202e' }); i >= 0 {
				t.Fatalf("output holds a control character at %d: %q", i, out)
			}
			if strings.Contains(stdout, "version 999") || bytes.Count([]byte(out), []byte("\n")) > 3 {
				t.Errorf("the forged text reached the output as lines of its own: %q", out)
			}
		})
	}
}

// jsonText is s as the inside of a JSON string.
func jsonText(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteString(`\` + string(r))
		case r < 0x20 || r >= 0x7f && r < 0xa0:
			b.WriteString(`\u00` + "0123456789abcdef"[r>>4:r>>4+1] + "0123456789abcdef"[r&15:r&15+1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
