package pattern

import (
	"encoding/binary"
	"fmt"
)

// Stream is the byte stream of one connection. The zero value is a valid
// stream (seed 0, connection 0).
type Stream struct {
	key uint64
}

// New returns the stream of connection conn under seed.
func New(seed, conn uint64) Stream {
	// Two rounds so that nearby (seed, conn) pairs give unrelated keys.
	return Stream{key: mix(seed ^ mix(conn+0x6a09e667f3bcc909))}
}

// golden is the splitmix64 increment (2^64 / phi).
const golden = 0x9e3779b97f4a7c15

// mix is the splitmix64 finalizer: a cheap bijective hash of 64 bits.
func mix(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// word returns the 8 bytes at offsets 8*i .. 8*i+7, little endian.
func (s Stream) word(i uint64) uint64 {
	return mix(s.key + (i+1)*golden)
}

// At returns the byte at offset off.
func (s Stream) At(off int64) byte {
	return byte(s.word(uint64(off)/8) >> (8 * (uint64(off) % 8)))
}

// Fill writes the bytes at offsets off .. off+len(p)-1 into p.
func (s Stream) Fill(p []byte, off int64) {
	o := uint64(off)
	// Unaligned head, byte by byte, then whole words.
	for len(p) > 0 && o%8 != 0 {
		p[0] = byte(s.word(o/8) >> (8 * (o % 8)))
		p, o = p[1:], o+1
	}
	for len(p) >= 8 {
		binary.LittleEndian.PutUint64(p, s.word(o/8))
		p, o = p[8:], o+8
	}
	if len(p) > 0 {
		w := s.word(o / 8)
		for i := range p {
			p[i] = byte(w >> (8 * i))
		}
	}
}

// MismatchError reports the first byte that differs from the stream.
type MismatchError struct {
	Offset    int64 // offset in the stream (the header not counted)
	Got, Want byte
}

// Error describes the mismatch.
func (e *MismatchError) Error() string {
	return fmt.Sprintf("pattern mismatch at offset %d: got %#02x, want %#02x", e.Offset, e.Got, e.Want)
}

// Check returns a *MismatchError for the first byte of p that is not the
// stream's byte at its offset (p starts at offset off), or nil.
func (s Stream) Check(p []byte, off int64) error {
	o := uint64(off)
	for len(p) > 0 && o%8 != 0 {
		if want := s.At(int64(o)); p[0] != want {
			return &MismatchError{Offset: int64(o), Got: p[0], Want: want}
		}
		p, o = p[1:], o+1
	}
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != s.word(o/8) {
			break // find the byte below
		}
		p, o = p[8:], o+8
	}
	for i := range p {
		if want := s.At(int64(o) + int64(i)); p[i] != want {
			return &MismatchError{Offset: int64(o) + int64(i), Got: p[i], Want: want}
		}
	}
	return nil
}

// Reader is an io.Reader of the stream from offset 0; it never ends.
type Reader struct {
	s   Stream
	off int64
}

// NewReader returns a Reader of s.
func (s Stream) NewReader() *Reader { return &Reader{s: s} }

// Read fills p with the next bytes of the stream.
func (r *Reader) Read(p []byte) (int, error) {
	r.s.Fill(p, r.off)
	r.off += int64(len(p))
	return len(p), nil
}

// Offset returns how many bytes were read.
func (r *Reader) Offset() int64 { return r.off }

// Verifier is an io.Writer that checks what is written to it against the
// stream, from offset 0. After the first mismatch every Write fails.
type Verifier struct {
	s   Stream
	off int64
	err error
}

// NewVerifier returns a Verifier of s.
func (s Stream) NewVerifier() *Verifier { return &Verifier{s: s} }

// Write checks p. On a mismatch it returns the number of bytes that
// matched and a *MismatchError.
func (v *Verifier) Write(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if err := v.s.Check(p, v.off); err != nil {
		me := err.(*MismatchError)
		n := int(me.Offset - v.off)
		v.off = me.Offset
		v.err = err
		return n, err
	}
	v.off += int64(len(p))
	return len(p), nil
}

// Offset returns how many bytes matched so far.
func (v *Verifier) Offset() int64 { return v.off }

// Err returns the first mismatch, or nil.
func (v *Verifier) Err() error { return v.err }
