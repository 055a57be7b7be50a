package controlplane

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// LivePrefix is where the records stream republishes every record it
// stores when Options.Live is set: the record under key <ws>.<secret> goes
// to LivePrefix+"<ws>.<secret>", where the agent of <ws> in live delivery
// (agent.DeliveryLive, agent.LivePrefix) subscribes with core NATS instead
// of keeping a consumer.
const LivePrefix = "nbsecrets.live."

// LeaderElected is the advisory nats-server publishes in the service's
// account when the records stream (on a JetStream cluster) elects a
// leader. Only the leader republishes, once it has stored a record: a
// leader that crashes in between leaves the record stored and republished
// by no one, so agents in live delivery read their records again after
// each election (agent.LeaderElected is the same subject).
const LeaderElected = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.KV_" + protocol.Bucket

// liveRePublish is the records stream's RePublish in live mode.
func liveRePublish() *jetstream.RePublish {
	return &jetstream.RePublish{Source: "$KV." + protocol.Bucket + ".>", Destination: LivePrefix + ">"}
}

// ensureRePublish adds the live RePublish to an existing records stream
// that lacks it (one made before live delivery, or by another tool); the
// rest of its configuration is kept.
func (s *Service) ensureRePublish(ctx context.Context, js jetstream.JetStream) error {
	stream, err := js.Stream(ctx, protocol.StreamName())
	if err != nil {
		return fmt.Errorf("controlplane: the records stream: %w", err)
	}
	cfg := stream.CachedInfo().Config
	want := liveRePublish()
	if rp := cfg.RePublish; rp != nil && *rp == *want {
		return nil
	}
	cfg.RePublish = want
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("controlplane: adding the live RePublish to the records stream: %w", err)
	}
	s.log.Info("records stream republishes to live subjects", "destination", want.Destination)
	return nil
}
