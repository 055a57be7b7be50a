package agent

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// pythonReseed is one silent Python expression that applies p: it binds no
// name in the user's namespace (lambda arguments only), prints nothing, and
// carries the values base64-encoded so that no value appears literally in
// the code, should a traceback ever quote it.
func pythonReseed(p Plan, managed string) (string, error) {
	unset := p.Unset
	if unset == nil {
		unset = []string{}
	}
	payload, err := json.Marshal(map[string]any{"set": p.Set, "unset": unset, "full": p.Full, "managed": managed})
	if err != nil {
		return "", fmt.Errorf("encoding re-seed: %w", err)
	}
	enc := base64.StdEncoding.EncodeToString(payload)
	clear(payload)
	return "(lambda o, p: ([o.environ.pop(k, None) for k in ((set(o.environ.get('" + ManagedVar + "', '').split(',')) - set(p['set']) - {''}) if p['full'] else p['unset'])], " +
		"o.environ.update(p['set']), o.environ.__setitem__('" + ManagedVar + "', p['managed'])) and None)" +
		"(__import__('os'), __import__('json').loads(__import__('base64').b64decode('" + enc + "')))", nil
}
