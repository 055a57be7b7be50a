package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// TestNatsConfigUsageLiftsConsumerLimit loads the jetstream block that
// `nbsecrets nats-config --help` tells operators to put in the server's
// configuration, as nats-server would, and checks that it lifts the cap of
// 1,000 consumers per stream; and that a jetstream block in an included file
// would replace the server's own (why the generated file does not carry it).
func TestNatsConfigUsageLiftsConsumerLimit(t *testing.T) {
	start := strings.Index(natsConfigUsage, "    jetstream {")
	end := strings.Index(natsConfigUsage, "    include ")
	if start < 0 || end < start {
		t.Fatal("the usage text no longer shows the jetstream block")
	}
	block := natsConfigUsage[start:end]
	if !strings.Contains(block, "default_max_consumers: -1") {
		t.Fatalf("the usage's jetstream block does not lift the consumer limit:\n%s", block)
	}
	tmp := t.TempDir()
	store := filepath.Join(tmp, "js")
	block = strings.Replace(block, "/var/lib/nats", store, 1)
	conf := filepath.Join(tmp, "nats.conf")
	if err := os.WriteFile(conf, []byte(block), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server refuses the usage's jetstream block: %v", err)
	}
	if opts.JetStreamLimits.DefaultMaxConsumers != -1 || opts.StoreDir != store {
		t.Fatalf("default_max_consumers = %d, store_dir = %q", opts.JetStreamLimits.DefaultMaxConsumers, opts.StoreDir)
	}

	// The same limit in an included file replaces the whole block.
	if err := os.WriteFile(filepath.Join(tmp, "inc.conf"), []byte("jetstream { limits { default_max_consumers: -1 } }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	main := "jetstream { store_dir: " + store + " }\ninclude \"inc.conf\"\n"
	if err := os.WriteFile(conf, []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err = server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if opts.StoreDir == store {
		t.Fatal("an included jetstream block merges with the server's own: nats-config could emit the limit")
	}
}
