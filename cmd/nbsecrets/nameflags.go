package main

import (
	"flag"
	"fmt"
	"regexp"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

// nameFlags are serve's flags for the name policy of shared secrets
// (controlplane.NamePolicy).
type nameFlags struct {
	pattern    *string
	adminsOnly *bool
}

func addNameFlags(fs *flag.FlagSet) *nameFlags {
	return &nameFlags{
		pattern: fs.String("shared-name-pattern", envOr("NBSECRETS_SHARED_NAME_PATTERN", ""),
			"regular expression every project secret's name and every name shared with a community must match in full, e.g. '^TEAM_[A-Z0-9_]+$' (default: any name the reserved list allows) ($NBSECRETS_SHARED_NAME_PATTERN)"),
		adminsOnly: fs.Bool("admins-name-shared", envOr("NBSECRETS_ADMINS_NAME_SHARED", "") == "true",
			"only project admins create project secrets, clone into a project or rename project secrets ($NBSECRETS_ADMINS_NAME_SHARED=true)"),
	}
}

// policy is the NamePolicy the flags give.
func (f *nameFlags) policy() (controlplane.NamePolicy, error) {
	p := controlplane.NamePolicy{AdminsNameShared: *f.adminsOnly}
	if *f.pattern != "" {
		re, err := regexp.Compile(`^(?:` + *f.pattern + `)$`)
		if err != nil {
			return p, fmt.Errorf("--shared-name-pattern: %w", err)
		}
		p.SharedPattern = re
	}
	return p, nil
}
