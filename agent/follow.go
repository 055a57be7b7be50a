package agent

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// FollowConfig configures Follow.
type FollowConfig struct {
	JS        jetstream.JetStream // required: on the agent's NATS connection
	Workspace Workspace           // required
	Opener    *protocol.Opener    // required
	// Delivery is DeliveryConsumer or DeliveryLive, as Config.Delivery.
	Delivery string
	// Changed is called with the desired state after each change the
	// reading publishes (on the reading goroutine: keep it short). Required.
	Changed func(*Desired)
	Logger  hclog.Logger // nil: none
}

// Follow reads the workspace's records exactly as a running agent does
// (the same syncer: delivery, checks, re-reads), with no kernels, socket or
// state file, until ctx ends. It is for measuring the agent's delivery
// at scale (nbsecrets-bench -fanout) with thousands in one process.
func Follow(ctx context.Context, cfg FollowConfig) error {
	if cfg.JS == nil || cfg.Opener == nil || cfg.Changed == nil {
		return errors.New("agent: Follow needs JS, Opener and Changed")
	}
	if err := protocol.ValidateID(cfg.Workspace.ID); err != nil {
		return err
	}
	if err := validDelivery(cfg.Delivery); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	st := newStore(cfg.Workspace)
	s := &syncer{js: cfg.JS, ws: cfg.Workspace.ID, opener: cfg.Opener, st: st, log: log, now: time.Now,
		live: cfg.Delivery == DeliveryLive}
	s.published = func() {
		if d, loaded := st.snapshot(); loaded {
			cfg.Changed(d)
		}
	}
	s.run(ctx)
	return nil
}
