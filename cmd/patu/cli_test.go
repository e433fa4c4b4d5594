package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no command"},
		{[]string{"--bogus"}, "flag provided but not defined"},
		{[]string{"frobnicate"}, "unknown command"},
	} {
		err := runTo(context.Background(), &bytes.Buffer{}, tc.args)
		var u usageError
		if !errors.As(err, &u) {
			t.Errorf("%v: got %v, want a usage error", tc.args, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v does not mention %q", tc.args, err, tc.want)
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if err := runTo(context.Background(), &out, []string{"help"}); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"load", "unload", "attach", "detach", "endpoint add", "status", "hook"} {
		if !strings.Contains(out.String(), cmd) {
			t.Errorf("help does not mention %q", cmd)
		}
	}
}
