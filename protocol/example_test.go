package protocol_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// The secrets service seals a value to one workspace and signs the record;
// the workspace's agent, which pins the service's two public keys, verifies
// and opens it.
func ExampleOpener_Open() {
	// The service's keys: an ed25519 nkey that signs, a curve key that seals.
	sign, _ := nkeys.CreateAccount()
	sealCurve, _ := nkeys.CreateCurveKeys()
	// The workspace's curve key; the service knows its public half.
	wsCurve, _ := nkeys.CreateCurveKeys()
	wsPub, _ := wsCurve.PublicKey()

	sealer, err := protocol.NewSealer(sign, sealCurve)
	if err != nil {
		panic(err)
	}
	to := protocol.Recipient{Workspace: "ws-1", CurveKey: wsPub}
	scope := protocol.Scope{Kind: protocol.ScopeProject, ID: "proj-7"}
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	data, err := sealer.Put(to, "sec-42", "DB-PASSWORD", 3, scope, []byte("hunter2"), now)
	if err != nil {
		panic(err)
	}
	key := protocol.RecordKey(to.Workspace, "sec-42") // where data goes in the bucket

	// The agent's side.
	signPub, _ := sign.PublicKey()
	sealPub, _ := sealCurve.PublicKey()
	opener, err := protocol.NewOpener("ws-1", []string{signPub}, sealPub, wsCurve)
	if err != nil {
		panic(err)
	}
	s, err := opener.Open(key, data)
	if err != nil {
		panic(err)
	}
	fmt.Println(s.Op, s.Name, s.Version, s.Scope)
	fmt.Println("printed by mistake:", s.Value)
	fmt.Println("used on purpose:", string(s.Value))

	// The same record stored under another secret's key is refused.
	_, err = opener.Open(protocol.RecordKey("ws-1", "sec-43"), data)
	fmt.Println(errors.Is(err, protocol.ErrKeyMismatch))

	// A deletion is a signed tombstone that keeps the name.
	tomb, _ := sealer.Delete("ws-1", "sec-42", "DB-PASSWORD", 4, scope, now)
	s, _ = opener.Open(key, tomb)
	fmt.Println(s.Op, s.Name, s.Version, s.Value == nil)
	// Output:
	// put DB-PASSWORD 3 project:proj-7
	// printed by mistake: [redacted]
	// used on purpose: hunter2
	// true
	// delete DB-PASSWORD 4 true
}

func ExampleValidateName() {
	for _, name := range []string{"DB-PASSWORD", "api_key", "x", "1PASSWORD", "TOKEN-", "LD_PRELOAD", "http_proxy"} {
		err := protocol.ValidateName(name)
		switch {
		case err == nil:
			fmt.Printf("%-12s ok\n", name)
		case errors.Is(err, protocol.ErrForbiddenName):
			fmt.Printf("%-12s forbidden\n", name)
		case errors.Is(err, protocol.ErrInvalidName):
			fmt.Printf("%-12s invalid\n", name)
		}
	}
	fmt.Println(protocol.ValidateName("TOKEN-"))
	fmt.Println(protocol.ValidateName("PYTHONSTARTUP"))
	// Output:
	// DB-PASSWORD  ok
	// api_key      ok
	// x            invalid
	// 1PASSWORD    invalid
	// TOKEN-       invalid
	// LD_PRELOAD   forbidden
	// http_proxy   forbidden
	// protocol: invalid secret name "TOKEN-": must not end with a hyphen or an underscore
	// protocol: forbidden secret name "PYTHONSTARTUP": reserved prefix PYTHON (language runtimes and their option variables)
}

func ExampleRecordKey() {
	fmt.Println(protocol.RecordKey("ws-1", "sec-42"))
	key, _ := protocol.KeyFromSubject("$KV.nbsecrets.ws-1.sec-42")
	fmt.Println(key)
	// Output:
	// ws-1.sec-42
	// ws-1.sec-42
}

// An agent reads its workspace's records with one filter subject on the
// bucket's stream.
func ExampleWorkspaceFilter() {
	fmt.Println(protocol.StreamName())
	fmt.Println(protocol.WorkspaceFilter("ws-1"))
	// Output:
	// KV_nbsecrets
	// $KV.nbsecrets.ws-1.>
}
