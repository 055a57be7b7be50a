package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/nbsecrets/nbsecrets/agent"
)

// deliveryFlag defines --delivery for `nbsecrets agent` (also with --exec)
// and `dev`: how the agent gets its records. Wire it as
// agent.Config.Delivery; agent.New refuses an unknown mode by name.
func deliveryFlag(fs *flag.FlagSet) *string {
	return fs.String("delivery", envOr("NBSECRETS_DELIVERY", agent.DeliveryLive),
		"how records arrive: live (records the service republishes to nbsecrets.live.<workspace>.>, a consumer only to read what is stored; "+
			"falls back to consumer by itself when the NATS permissions refuse it or the service does not republish) "+
			"or consumer (a NATS consumer of the agent's own while it runs) ($NBSECRETS_DELIVERY)")
}

// liveFlag defines --live for `serve` and `hub-service`: whether the
// records stream republishes every record for agents in live delivery
// (controlplane.Options.Live). On by default; $NBSECRETS_LIVE (true or
// false, 1 or 0) changes the default. The returned function gives the
// value, or an error naming a malformed $NBSECRETS_LIVE.
func liveFlag(fs *flag.FlagSet) func() (bool, error) {
	def, err := true, error(nil)
	if v := os.Getenv("NBSECRETS_LIVE"); v != "" {
		if def, err = strconv.ParseBool(v); err != nil {
			def, err = true, fmt.Errorf("$NBSECRETS_LIVE=%q: want true or false (1 or 0)", v)
		}
	}
	live := fs.Bool("live", def,
		"republish every record to nbsecrets.live.<workspace>.<secret> for agents in live delivery (the records stream's RePublish, "+
			"added to an existing bucket: needs STREAM.UPDATE of KV_nbsecrets); --live=false does not remove one already set ($NBSECRETS_LIVE)")
	return func() (bool, error) { return *live, err }
}

// batchSignaturesFlag defines --batch-signatures for `serve` and
// `hub-service` (controlplane.Options.SingleSignatures is its negation):
// on by default, a fan-out signs each chunk of records once; off, every
// record is signed alone, as before batch signatures, which agents older
// than them need: the first step of a rolling upgrade (README, "Upgrading").
func batchSignaturesFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("batch-signatures", true,
		"sign each chunk of a fan-out's records once (a Merkle tree's root); false: sign every record alone, "+
			"for as long as agents older than batch signatures read the bucket (they refuse batch records)")
}
