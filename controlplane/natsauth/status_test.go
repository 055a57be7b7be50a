package natsauth_test

import (
	"context"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestRolloutStatusSubjects: an agent's rollout status reaches the
// service's account, on its own workspace's subject; an agent cannot
// publish as another workspace, and neither another agent nor a user can
// read any status.
func TestRolloutStatusSubjects(t *testing.T) {
	starters := map[string]func(*testing.T) starter{"embedded": func(*testing.T) starter { return startEmbedded }, "debian": binaryStarter}
	for name, mk := range starters {
		t.Run(name, func(t *testing.T) {
			start := mk(t)
			d := newDeployment(t)
			url := start(t, writeServerConfig(t, t.TempDir(), d.auth))
			svc := connect(t, url, d.svcNATS)
			sub, err := svc.SubscribeSync(protocol.StatusSubjectPrefix + "*")
			if err != nil {
				t.Fatal(err)
			}
			if err := svc.Flush(); err != nil {
				t.Fatal(err)
			}
			agentA, agentB := connect(t, url, d.agentNATS["wsa"]), connect(t, url, d.agentNATS["wsb"])
			alice := connect(t, url, d.userNATS["alice"])

			if err := agentA.Publish(protocol.StatusSubject("wsa"), []byte(`{"workspace":"wsa"}`)); err != nil {
				t.Fatal(err)
			}
			m, err := sub.NextMsg(10 * time.Second)
			if err != nil {
				t.Fatalf("the service did not receive wsa's status: %v", err)
			}
			if m.Subject != protocol.StatusSubject("wsa") {
				t.Fatalf("status arrived on %s", m.Subject)
			}

			expectDenied(t, agentA, "Publish", protocol.StatusSubject("wsb"), func(ctx context.Context) error {
				if err := agentA.Publish(protocol.StatusSubject("wsb"), []byte(`{"workspace":"wsb"}`)); err != nil {
					return err
				}
				<-ctx.Done() // a publish is not answered: the violation is the refusal
				return ctx.Err()
			})
			for who, c := range map[string]*conn{"agent of wsb": agentB, "alice": alice} {
				expectDenied(t, c, "Subscription", protocol.StatusSubject("wsa"), func(ctx context.Context) error {
					_, err := c.SubscribeSync(protocol.StatusSubject("wsa"))
					if err == nil {
						err = c.FlushWithContext(ctx)
					}
					return err
				})
				t.Logf("%s may not read wsa's status", who)
			}
			if m, err := sub.NextMsg(300 * time.Millisecond); err == nil {
				t.Fatalf("a forged status reached the service on %s", m.Subject)
			}
		})
	}
}
