package hub

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// ServerProofEnv is the variable in which the hub hands a server its
// server proof (deploy/jupyterhub/nbsecrets_config.py sets it in
// c.Spawner.environment); the agent sends it with its registration.
const ServerProofEnv = "NBSECRETS_SERVER_PROOF"

// serverProofLabel separates server proofs from any other use of the key.
const serverProofLabel = "nbsecrets-server-proof-v1"

// minProofKey is the shortest server proof key accepted, in bytes.
const minProofKey = 32

// ServerProof is the proof that the hub gave a server with token to
// server of user: "v1." and the unpadded base64url HMAC-SHA256, under the
// key only the hub process and the service hold, of
//
//	"nbsecrets-server-proof-v1" NUL user NUL server NUL hex(sha256(token))
//
// It is bound to the token, which the hub deletes when the server stops:
// a proof outlives its server no more than the token does. The fragment
// computes the same in Python (nbsecrets_config.py's _server_proof).
func ServerProof(key []byte, user, server, token string) string {
	sum := sha256.Sum256([]byte(token))
	m := hmac.New(sha256.New, key)
	for _, part := range []string{serverProofLabel, user, server} {
		m.Write([]byte(part))
		m.Write([]byte{0})
	}
	m.Write([]byte(hex.EncodeToString(sum[:])))
	return "v1." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkServerProof says whether proof is ServerProof(key, user, server,
// token), in constant time.
func checkServerProof(key []byte, user, server, token, proof string) bool {
	want := ServerProof(key, user, server, token)
	return len(key) >= minProofKey && hmac.Equal([]byte(want), []byte(proof))
}

// LoadProofKey reads the server proof key: hex, at least 32 bytes, in a
// file that its group and others cannot read or write (the fragment makes
// it at the hub's start, 0600, in the service's state directory).
func LoadProofKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("server proof key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("server proof key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("server proof key: %s: mode %v lets group or others in; want 0600", path, st.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, 4<<10))
	if err != nil {
		return nil, fmt.Errorf("server proof key: reading %s: %w", path, err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("server proof key: %s: not hex: %w", path, err)
	}
	if len(key) < minProofKey {
		return nil, fmt.Errorf("server proof key: %s: %d bytes, want at least %d", path, len(key), minProofKey)
	}
	return key, nil
}

// tokenServers reads which of user's servers a token is bound to from the
// scopes the hub reports for it (GET /hub/api/user's "scopes"). JupyterHub
// 4 and later give a server's token access:servers!server=<user>/<server>
// (the "server" role's access:servers!server, resolved at spawn); a token
// that reaches the servers of a user, a group or everyone
// (access:servers!user=..., as JupyterHub 3 gives server tokens, or
// unfiltered) is bound to none: bound is then false.
func tokenServers(user string, scopes []string) (servers []string, bound bool) {
	for _, s := range scopes {
		name, filter, _ := strings.Cut(s, "!")
		if name != "access:servers" {
			continue
		}
		target, ok := strings.CutPrefix(filter, "server=")
		if !ok {
			return nil, false // a wider reach than one server
		}
		if owner, server, ok := strings.Cut(target, "/"); ok && owner == user {
			servers = append(servers, server)
		}
	}
	return servers, len(servers) > 0
}

// errServerUnproven is why a registration whose server cannot be told is
// refused.
var errServerUnproven = errors.New("the hub does not bind the token to one server (JupyterHub 3 server tokens reach all of the user's servers) and the registration carries no valid server proof ($" + ServerProofEnv + ", which nbsecrets_config.py gives every server)")

// proveServer checks that token, the hub's token of user with scopes,
// belongs to user's server server: by the token's server scopes where the
// hub gives them, else by the server proof. A proof that is sent is always
// checked. key nil: no proofs are accepted.
func proveServer(key []byte, user, server, token string, scopes []string, proof string) error {
	if proof != "" && (key == nil || !checkServerProof(key, user, server, token, proof)) {
		return fmt.Errorf("the server proof is not the hub's for server %q of %s with this token", server, user)
	}
	if servers, bound := tokenServers(user, scopes); bound {
		if !slices.Contains(servers, server) {
			return fmt.Errorf("the token is for server %s of %s, not %s", quoteServers(servers), user, printable(server))
		}
		return nil
	}
	if proof == "" {
		return errServerUnproven
	}
	return nil
}

func quoteServers(servers []string) string {
	q := make([]string, len(servers))
	for i, s := range servers {
		q[i] = printable(s)
	}
	return strings.Join(q, ", ")
}
