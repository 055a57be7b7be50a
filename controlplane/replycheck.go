package controlplane

import (
	"errors"
	"fmt"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// maxReplyMessage bounds the error message of a reply as a Client passes
// it on.
const maxReplyMessage = 1000

// checkReply refuses a reply no service sends: names that are not secret
// names, ids that are not ids, scopes of no known kind. Replies come from
// whoever answers on the API subject; where NATS lets someone other than
// the service answer, a reply is the responder's text, and a client prints
// its names and ids (the error message it makes safe with
// protocol.SafeText). A name reserved since it was created passes: the
// service still lists it.
func checkReply(rep *reply) error {
	if rep.Secret != nil {
		if err := checkInfo(rep.Secret); err != nil {
			return err
		}
	}
	for i := range rep.Secrets {
		if err := checkInfo(&rep.Secrets[i]); err != nil {
			return fmt.Errorf("secret %d: %w", i, err)
		}
	}
	return nil
}

func checkInfo(in *SecretInfo) error {
	if err := protocol.ValidateName(in.Name); err != nil && !errors.Is(err, protocol.ErrForbiddenName) {
		return err
	}
	ids := []string{in.ID}
	for _, s := range []string{in.UpdatedBy, in.CreatedBy, in.Via} {
		if s != "" {
			ids = append(ids, s)
		}
	}
	ids = append(append(ids, in.Communities...), in.Workspaces...)
	for _, id := range ids {
		if err := protocol.ValidateID(id); err != nil {
			return err
		}
	}
	if err := in.Scope.Validate(); err != nil {
		return err
	}
	if in.ShadowedBy != nil {
		if err := in.ShadowedBy.Validate(); err != nil {
			return err
		}
	}
	for _, sc := range in.Hides {
		if err := sc.Validate(); err != nil {
			return err
		}
	}
	return nil
}
