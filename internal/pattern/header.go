package pattern

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderLen is the size of an encoded Header.
const HeaderLen = 16

// Magic starts every Header: "PTU1".
const Magic uint32 = 0x50545531

// UnknownLength is the Length of a stream whose end only EOF marks.
const UnknownLength = ^uint32(0)

// ErrBadMagic is returned by ParseHeader for bytes that are not a Header.
var ErrBadMagic = errors.New("not a pattern header (bad magic)")

// Header precedes a stream on the wire and names it: 16 bytes, big endian,
// magic, connection, seed, length.
type Header struct {
	Conn   uint32
	Seed   uint32
	Length uint32 // payload bytes after the header, or UnknownLength
}

// Stream returns the stream the header announces.
func (h Header) Stream() Stream { return New(uint64(h.Seed), uint64(h.Conn)) }

// Marshal encodes h.
func (h Header) Marshal() [HeaderLen]byte {
	var b [HeaderLen]byte
	binary.BigEndian.PutUint32(b[0:], Magic)
	binary.BigEndian.PutUint32(b[4:], h.Conn)
	binary.BigEndian.PutUint32(b[8:], h.Seed)
	binary.BigEndian.PutUint32(b[12:], h.Length)
	return b
}

// ParseHeader decodes the first HeaderLen bytes of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("pattern header: %d bytes, want %d", len(b), HeaderLen)
	}
	if m := binary.BigEndian.Uint32(b); m != Magic {
		return Header{}, fmt.Errorf("pattern header: %w: %#08x", ErrBadMagic, m)
	}
	return Header{
		Conn:   binary.BigEndian.Uint32(b[4:]),
		Seed:   binary.BigEndian.Uint32(b[8:]),
		Length: binary.BigEndian.Uint32(b[12:]),
	}, nil
}
