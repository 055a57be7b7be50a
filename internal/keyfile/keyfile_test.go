package keyfile_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/internal/keyfile"
)

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys", "users")
	path := filepath.Join(dir, "alice.nk")

	kp, created, err := keyfile.LoadOrCreate(path, false, nkeys.PrefixByteUser)
	if err != nil || !created {
		t.Fatalf("create: %v, created %v", err, created)
	}
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		t.Fatalf("public key %q: %v", pub, err)
	}
	sig, err := kp.Sign([]byte("m"))
	if err != nil || kp.Verify([]byte("m"), sig) != nil {
		t.Fatalf("created key cannot sign: %v", err)
	}
	for p, want := range map[string]fs.FileMode{path: 0o600, dir: 0o700, filepath.Dir(dir): 0o700} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s: mode %#o, want %#o", p, got, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("left temporary files: %v", entries)
	}

	again, created, err := keyfile.LoadOrCreate(path, false, nkeys.PrefixByteUser)
	if err != nil || created {
		t.Fatalf("load: %v, created %v", err, created)
	}
	if pub2, _ := again.PublicKey(); pub2 != pub {
		t.Fatalf("loaded %s, created %s", pub2, pub)
	}
	loaded, err := keyfile.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if pub3, _ := loaded.PublicKey(); pub3 != pub {
		t.Fatalf("Load gave %s, want %s", pub3, pub)
	}

	if _, _, err := keyfile.LoadOrCreate(path, false, nkeys.PrefixByteAccount); !errors.Is(err, keyfile.ErrWrongKind) {
		t.Errorf("user seed loaded as an account key: %v", err)
	}
	if _, _, err := keyfile.LoadOrCreate(path, true, 0); !errors.Is(err, keyfile.ErrWrongKind) {
		t.Errorf("user seed loaded as a curve key: %v", err)
	}
}

func TestCurveKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ws.nk")
	kp, created, err := keyfile.LoadOrCreate(path, true, 0)
	if err != nil || !created {
		t.Fatalf("create: %v, created %v", err, created)
	}
	pub, _ := kp.PublicKey()
	loaded, err := keyfile.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	box, err := kp.Seal([]byte("hello"), pub)
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := loaded.Open(box, pub); err != nil || string(plain) != "hello" {
		t.Fatalf("loaded curve key cannot open: %q, %v", plain, err)
	}
	if _, _, err := keyfile.LoadOrCreate(path, true, nkeys.PrefixByteCurve); err != nil {
		t.Fatalf("explicit curve kind: %v", err)
	}
	if _, _, err := keyfile.LoadOrCreate(filepath.Join(t.TempDir(), "x.nk"), false, nkeys.PrefixByteCurve); err == nil {
		t.Fatal("ed25519 with the curve kind accepted")
	}
}

func TestLoadRefuses(t *testing.T) {
	dir := t.TempDir()
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	write := func(name string, data []byte, mode fs.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, mode := range []fs.FileMode{0o644, 0o640, 0o604, 0o660, 0o606} {
		p := write("loose.nk", seed, mode)
		_, err := keyfile.Load(p)
		if !errors.Is(err, keyfile.ErrLoosePermissions) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %#o: %v", mode, err)
		}
		if _, _, err := keyfile.LoadOrCreate(p, false, nkeys.PrefixByteUser); !errors.Is(err, keyfile.ErrLoosePermissions) {
			t.Errorf("LoadOrCreate mode %#o: %v", mode, err)
		}
	}
	if _, err := keyfile.Load(write("owner-only.nk", seed, 0o400)); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
	_, err := keyfile.Load(write("garbage.nk", []byte("not a seed"), 0o600))
	if err == nil || strings.Contains(err.Error(), "not a seed") {
		t.Errorf("garbage: %v", err)
	}
	if _, err := keyfile.Load(filepath.Join(dir, "missing.nk")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	if _, err := keyfile.Load(dir); err == nil {
		t.Error("directory accepted")
	}
}

// TestCreateRace has several goroutines create the same key: they all end
// up with one key.
func TestCreateRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.nk")
	const n = 8
	pubs := make([]string, n)
	var created sync.Map
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			kp, c, err := keyfile.LoadOrCreate(path, false, nkeys.PrefixByteAccount)
			if err != nil {
				t.Error(err)
				return
			}
			if c {
				created.Store(i, true)
			}
			pubs[i], _ = kp.PublicKey()
		})
	}
	wg.Wait()
	count := 0
	created.Range(func(any, any) bool { count++; return true })
	if count != 1 {
		t.Errorf("%d creators, want 1", count)
	}
	for _, p := range pubs {
		if p != pubs[0] {
			t.Fatalf("different keys: %v", pubs)
		}
	}
}
