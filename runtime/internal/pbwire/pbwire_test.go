package pbwire

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestEach(t *testing.T) {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, "id")
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, 300)
	b = protowire.AppendTag(b, 3, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 7)
	b = protowire.AppendTag(b, 4, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 1<<40)
	b = protowire.AppendTag(b, 5, protowire.StartGroupType) // skipped whole
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	b = protowire.AppendTag(b, 5, protowire.EndGroupType)
	b = protowire.AppendTag(b, 1, protowire.BytesType) // repeated
	b = protowire.AppendString(b, "again")

	var got []Field
	if err := Each(b, func(f Field) error { got = append(got, f); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []Field{
		{Num: 1, Type: protowire.BytesType, Bytes: []byte("id")},
		{Num: 2, Type: protowire.VarintType, Int: 300},
		{Num: 3, Type: protowire.Fixed32Type, Int: 7},
		{Num: 4, Type: protowire.Fixed64Type, Int: 1 << 40},
		{Num: 1, Type: protowire.BytesType, Bytes: []byte("again")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Each:\n got %+v\nwant %+v", got, want)
	}
	if !got[0].Len(1) || got[0].Len(2) || got[0].Varint(1) || !got[1].Varint(2) {
		t.Error("Len/Varint")
	}

	stop := errors.New("stop")
	n := 0
	if err := Each(b, func(Field) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("Each did not stop at the callback's error: %v after %d", err, n)
	}

	malformed := [][]byte{
		{0x0a},            // length missing
		{0x0a, 0x05, 'a'}, // length past the end
		{0x10},            // varint missing
		{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, // tag overflows
		{0x0c},       // end group without start
		{0x1d, 0x00}, // fixed32 cut short
	}
	for _, m := range malformed {
		if err := Each(m, func(Field) error { return nil }); !errors.Is(err, ErrMalformed) {
			t.Errorf("Each(%x) = %v, want ErrMalformed", m, err)
		}
	}
}

// The well-known types are checked against protobuf's own encoder.
func TestWellKnown(t *testing.T) {
	for _, ts := range []time.Time{
		time.Date(2025, 11, 26, 23, 43, 29, 147802750, time.UTC),
		time.Unix(0, 0),
		time.Unix(-1, 5), // before the epoch: negative seconds, positive nanos
	} {
		b, err := proto.Marshal(timestamppb.New(ts))
		if err != nil {
			t.Fatal(err)
		}
		got, err := Timestamp(b)
		if err != nil || !got.Equal(ts) {
			t.Errorf("Timestamp(%v) = %v, %v", ts, got, err)
		}
	}

	v, err := anypb.New(structpb.NewStringValue("x"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	url, value, err := Any(b)
	if err != nil || url != "type.googleapis.com/google.protobuf.Value" || string(value) != string(v.Value) {
		t.Errorf("Any = %q, %x, %v", url, value, err)
	}

	// map<string, string> entries, as CRI labels: {key = 1; value = 2}.
	var entry []byte
	entry = protowire.AppendTag(entry, 1, protowire.BytesType)
	entry = protowire.AppendString(entry, "app")
	entry = protowire.AppendTag(entry, 2, protowire.BytesType)
	entry = protowire.AppendString(entry, "web")
	var m map[string]string
	if err := AddMapEntry(&m, entry); err != nil || m["app"] != "web" {
		t.Errorf("AddMapEntry = %v, %v", m, err)
	}
	// An entry with an empty value leaves field 2 out.
	if err := AddMapEntry(&m, entry[:5]); err != nil || len(m) != 1 || m["app"] != "" {
		t.Errorf("AddMapEntry(key only) = %v, %v", m, err)
	}
	if err := AddMapEntry(&m, []byte{0x0a, 0x09}); err == nil {
		t.Error("AddMapEntry of a malformed entry succeeded")
	}
}

func TestAppend(t *testing.T) {
	tests := []struct {
		got, want []byte
	}{
		{AppendString(nil, 1, ""), nil},
		{AppendString(nil, 1, "ab"), []byte{0x0a, 2, 'a', 'b'}},
		{AppendBool(nil, 2, false), nil},
		{AppendBool(nil, 2, true), []byte{0x10, 1}},
		{AppendBool(AppendString(nil, 1, "x"), 2, true), []byte{0x0a, 1, 'x', 0x10, 1}},
	}
	for i, tt := range tests {
		if string(tt.got) != string(tt.want) {
			t.Errorf("case %d: %x, want %x", i, tt.got, tt.want)
		}
	}
}
