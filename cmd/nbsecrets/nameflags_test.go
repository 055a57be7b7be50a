package main

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestNameFlags(t *testing.T) {
	parse := func(args ...string) (*nameFlags, error) {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f := addNameFlags(fs)
		return f, fs.Parse(args)
	}
	f, err := parse("--shared-name-pattern", "TEAM_[A-Z]+|OTHER", "--admins-name-shared")
	if err != nil {
		t.Fatal(err)
	}
	p, err := f.policy()
	if err != nil {
		t.Fatal(err)
	}
	if !p.AdminsNameShared {
		t.Error("--admins-name-shared not set")
	}
	for name, want := range map[string]bool{"TEAM_A": true, "OTHER": true, "XTEAM_A": false, "TEAM_A1": false, "OTHERS": false} {
		if got := p.SharedPattern.MatchString(name); got != want {
			t.Errorf("pattern matches %q: %v, want %v (the pattern must match the whole name)", name, got, want)
		}
	}
	f, _ = parse("--shared-name-pattern", "TEAM_(")
	if _, err := f.policy(); err == nil || !strings.Contains(err.Error(), "--shared-name-pattern") {
		t.Errorf("bad pattern: %v", err)
	}
	f, _ = parse()
	if p, err := f.policy(); err != nil || p.SharedPattern != nil || p.AdminsNameShared {
		t.Errorf("default policy %+v, %v; want the zero value", p, err)
	}
}
