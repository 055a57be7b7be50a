// Package keyfile keeps nkey seeds in files: one seed per file, mode 0600,
// in a directory created 0700. It refuses to load a seed file that others
// can read or write, the way ssh refuses a loose private key.
package keyfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nats-io/nkeys"
)

// ErrLoosePermissions is returned for a seed file that its group or others
// may read or write.
var ErrLoosePermissions = errors.New("keyfile: seed file is accessible to group or others")

// ErrWrongKind is returned when a seed file holds another kind of key than
// the one asked for.
var ErrWrongKind = errors.New("keyfile: seed file holds another kind of key")

// maxSeedFile bounds what Load reads: a seed is 58 characters.
const maxSeedFile = 4 << 10

// Load reads the nkey seed in path: an ed25519 key of any kind or a curve
// key. The file must not be accessible to group or others.
func Load(path string) (nkeys.KeyPair, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("keyfile: %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %#o (want 0600; run 'chmod 600 %s')", ErrLoosePermissions, path, perm, path)
	}
	buf, err := io.ReadAll(io.LimitReader(f, maxSeedFile+1))
	defer clear(buf)
	if err != nil {
		return nil, fmt.Errorf("keyfile: reading %s: %w", path, err)
	}
	if len(buf) > maxSeedFile {
		return nil, fmt.Errorf("keyfile: %s is too large for a seed file", path)
	}
	seed := bytes.TrimSpace(buf)
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		// The nkeys error does not contain the seed.
		return nil, fmt.Errorf("keyfile: %s does not hold an nkey seed: %w", path, err)
	}
	return kp, nil
}

// LoadOrCreate loads the seed in path, or creates a new key and writes its
// seed there (mode 0600, parent directories 0700) when the file does not
// exist. With curve true the key is a curve (X25519) key and kind is
// ignored; otherwise it is an ed25519 key of kind (nkeys.PrefixByteUser,
// nkeys.PrefixByteAccount, ...). An existing file
// holding another kind of key is refused with ErrWrongKind. created reports
// whether the key is new. Two processes racing to create the same file end
// up with the same key: the loser loads the winner's.
func LoadOrCreate(path string, curve bool, kind nkeys.PrefixByte) (kp nkeys.KeyPair, created bool, err error) {
	switch {
	case curve:
		kind = nkeys.PrefixByteCurve
	case kind == nkeys.PrefixByteCurve || kind == nkeys.PrefixByteSeed || kind == nkeys.PrefixBytePrivate:
		return nil, false, fmt.Errorf("keyfile: %v is not an ed25519 key kind", kind)
	}
	kp, err = Load(path)
	switch {
	case err == nil:
		return checkKind(path, kp, kind)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, err
	}
	if curve {
		kp, err = nkeys.CreateCurveKeys()
	} else {
		kp, err = nkeys.CreatePair(kind)
	}
	if err != nil {
		return nil, false, fmt.Errorf("keyfile: creating key: %w", err)
	}
	won, err := create(path, kp)
	if err != nil {
		return nil, false, err
	}
	if !won {
		kp, err = Load(path)
		if err != nil {
			return nil, false, err
		}
		return checkKind(path, kp, kind)
	}
	return kp, true, nil
}

func checkKind(path string, kp nkeys.KeyPair, kind nkeys.PrefixByte) (nkeys.KeyPair, bool, error) {
	seed, err := kp.Seed()
	if err != nil {
		return nil, false, fmt.Errorf("keyfile: %s: %w", path, err)
	}
	got, raw, err := nkeys.DecodeSeed(seed)
	clear(raw)
	if err != nil {
		return nil, false, fmt.Errorf("keyfile: %s: %w", path, err)
	}
	if got != kind {
		return nil, false, fmt.Errorf("%w: %s holds a %v key, want %v", ErrWrongKind, path, got, kind)
	}
	return kp, false, nil
}

// create writes kp's seed to path unless path exists: it writes a temporary
// file and links it into place, so no reader sees half a seed and no
// existing file is replaced. won is false when another file got there first.
func create(path string, kp nkeys.KeyPair) (won bool, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("keyfile: %w", err)
	}
	seed, err := kp.Seed() // the key pair's own bytes: not to be cleared
	if err != nil {
		return false, fmt.Errorf("keyfile: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return false, fmt.Errorf("keyfile: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(seed)
	if err == nil {
		_, err = tmp.Write([]byte{'\n'})
	}
	err = errors.Join(err, tmp.Chmod(0o600), tmp.Sync(), tmp.Close())
	if err != nil {
		return false, fmt.Errorf("keyfile: writing %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("keyfile: %w", err)
	}
	return true, nil
}
