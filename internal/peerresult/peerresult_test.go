package peerresult

import (
	"errors"
	"testing"
)

func TestParseTakesLastLine(t *testing.T) {
	r, err := Parse([]byte("progress 1\n{\"mode\":\"echo\",\"conns\":3,\"ok\":2,\"failed\":1,\"bytes\":7}\n\n"))
	if err != nil || r.Mode != "echo" || r.Conns != 3 || r.Failed != 1 || r.Bytes != 7 {
		t.Fatalf("Parse = %+v, %v", r, err)
	}
	if _, err := Parse(nil); !errors.Is(err, ErrNoResult) {
		t.Errorf("empty output: %v", err)
	}
	if _, err := Parse([]byte("not json\n")); err == nil {
		t.Error("garbage parsed")
	}
}
