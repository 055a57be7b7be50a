package main

import (
	"fmt"
	"strings"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

// noteHides tells the user, on standard error, which same-named secrets
// the one just made or renamed hides in the workspaces both reach: a
// project secret replacing a community share the project relied on, or a
// private secret replacing a project's, is never silent.
func noteHides(env *cliEnv, info *controlplane.SecretInfo) {
	if len(info.Hides) == 0 {
		return
	}
	var scopes []string
	for _, sc := range info.Hides {
		scopes = append(scopes, sc.String())
	}
	fmt.Fprintf(env.stderr, "note: %s now hides the secret of the same name in %s, in the workspaces both reach (private over project over community); 'nbsecrets secret list' marks which\n",
		info.Name, strings.Join(scopes, ", "))
}
