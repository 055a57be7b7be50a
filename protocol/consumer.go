package protocol

// ConsumerName is the one name the consumer of workspace's agent has on
// the bucket's stream. NATS permissions match whole subject tokens, and a
// consumer's name is one token of the JetStream API subjects that create,
// pull from and delete it, so a fixed name per workspace is what lets the
// per-account configuration give each agent exactly its own consumer and
// no other (one agent per workspace).
func ConsumerName(workspace string) string { return "nbsecrets-ws-" + workspace }
