package main

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/nbsecrets/nbsecrets/agent"
)

// TestDeliveryDefaults: agents deliver live and services republish unless
// told otherwise, by flag or environment; a malformed $NBSECRETS_LIVE is
// refused by name.
func TestDeliveryDefaults(t *testing.T) {
	parse := func(t *testing.T, args ...string) (string, bool, error) {
		t.Helper()
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		delivery, live := deliveryFlag(fs), liveFlag(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		on, err := live()
		return *delivery, on, err
	}
	t.Setenv("NBSECRETS_DELIVERY", "")
	t.Setenv("NBSECRETS_LIVE", "")
	if d, on, err := parse(t); d != agent.DeliveryLive || !on || err != nil {
		t.Errorf("defaults: delivery %q, live %v, %v; want live, true", d, on, err)
	}
	if d, on, err := parse(t, "--delivery", "consumer", "--live=false"); d != agent.DeliveryConsumer || on || err != nil {
		t.Errorf("flags: delivery %q, live %v, %v; want consumer, false", d, on, err)
	}
	t.Setenv("NBSECRETS_DELIVERY", "consumer")
	t.Setenv("NBSECRETS_LIVE", "0")
	if d, on, err := parse(t); d != agent.DeliveryConsumer || on || err != nil {
		t.Errorf("environment: delivery %q, live %v, %v; want consumer, false", d, on, err)
	}
	if _, on, err := parse(t, "--live"); !on || err != nil {
		t.Errorf("--live over NBSECRETS_LIVE=0: %v, %v", on, err)
	}
	t.Setenv("NBSECRETS_LIVE", "yes please")
	if _, _, err := parse(t); err == nil || !strings.Contains(err.Error(), "NBSECRETS_LIVE") {
		t.Errorf("malformed NBSECRETS_LIVE: %v", err)
	}
}

// TestBatchSignaturesFlag: services sign a fan-out's chunks once unless
// --batch-signatures=false, the rolling upgrade's first step.
func TestBatchSignaturesFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{{nil, true}, {[]string{"--batch-signatures=false"}, false}, {[]string{"--batch-signatures"}, true}} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		on := batchSignaturesFlag(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if *on != c.want {
			t.Errorf("%q: batch signatures %v, want %v", c.args, *on, c.want)
		}
	}
}
