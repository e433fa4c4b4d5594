package pbwire

import (
	"errors"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrMalformed is returned for bytes that are not a protobuf message.
var ErrMalformed = errors.New("malformed protobuf message")

// Field is one field of a message as found on the wire.
type Field struct {
	Num   protowire.Number
	Type  protowire.Type
	Int   uint64 // value of varint, fixed32 and fixed64 fields
	Bytes []byte // content of length-delimited fields (strings, bytes, messages, packed)
}

// Len reports whether f is length-delimited field num.
func (f Field) Len(num protowire.Number) bool {
	return f.Num == num && f.Type == protowire.BytesType
}

// Varint reports whether f is varint field num.
func (f Field) Varint(num protowire.Number) bool {
	return f.Num == num && f.Type == protowire.VarintType
}

// Each calls fn for every field of the message b, in wire order. Groups
// (a proto2 relic) are skipped. It stops at the first error fn returns.
func Each(b []byte, fn func(Field) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ErrMalformed
		}
		b = b[n:]
		f := Field{Num: num, Type: typ}
		switch typ {
		case protowire.VarintType:
			f.Int, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var v uint32
			v, n = protowire.ConsumeFixed32(b)
			f.Int = uint64(v)
		case protowire.Fixed64Type:
			f.Int, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			f.Bytes, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return ErrMalformed
		}
		b = b[n:]
		if typ == protowire.StartGroupType {
			continue
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// Timestamp decodes google.protobuf.Timestamp {int64 seconds = 1; int32 nanos = 2}.
func Timestamp(b []byte) (time.Time, error) {
	var sec, nsec int64
	err := Each(b, func(f Field) error {
		switch {
		case f.Varint(1):
			sec = int64(f.Int)
		case f.Varint(2):
			nsec = int64(int32(f.Int))
		}
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(sec, nsec), nil
}

// Any decodes google.protobuf.Any {string type_url = 1; bytes value = 2}.
func Any(b []byte) (typeURL string, value []byte, err error) {
	err = Each(b, func(f Field) error {
		switch {
		case f.Len(1):
			typeURL = string(f.Bytes)
		case f.Len(2):
			value = f.Bytes
		}
		return nil
	})
	return typeURL, value, err
}

// MapEntry decodes an entry of a map<string, string> field {key = 1; value = 2}.
func MapEntry(b []byte) (key, value string, err error) {
	err = Each(b, func(f Field) error {
		switch {
		case f.Len(1):
			key = string(f.Bytes)
		case f.Len(2):
			value = string(f.Bytes)
		}
		return nil
	})
	return key, value, err
}

// AddMapEntry decodes a map<string, string> entry into *m, making the map
// on first use.
func AddMapEntry(m *map[string]string, b []byte) error {
	k, v, err := MapEntry(b)
	if err != nil {
		return err
	}
	if *m == nil {
		*m = make(map[string]string)
	}
	(*m)[k] = v
	return nil
}

// AppendString appends string field num; an empty string, proto3's
// default, is left out.
func AppendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// AppendBool appends bool field num; false, proto3's default, is left out.
func AppendBool(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, 1)
}

// AppendBytes appends a length-delimited field (bytes or an embedded
// message).
func AppendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}
