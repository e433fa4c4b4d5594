package pattern

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func payload(s Stream, n int) []byte {
	p := make([]byte, n)
	s.Fill(p, 0)
	return p
}

func TestFillAtAgree(t *testing.T) {
	s := New(42, 7)
	p := payload(s, 1000)
	for off := range p {
		if s.At(int64(off)) != p[off] {
			t.Fatalf("At(%d) = %#x, Fill gave %#x", off, s.At(int64(off)), p[off])
		}
	}
	// Every start offset and length, aligned or not, yields the same bytes.
	for off := 0; off < 24; off++ {
		for n := 0; n < 40; n++ {
			q := make([]byte, n)
			s.Fill(q, int64(off))
			if !bytes.Equal(q, p[off:off+n]) {
				t.Fatalf("Fill(off %d, len %d) differs", off, n)
			}
			if err := s.Check(q, int64(off)); err != nil {
				t.Fatalf("Check(off %d, len %d): %v", off, n, err)
			}
		}
	}
}

func TestStreamsDiffer(t *testing.T) {
	a := payload(New(1, 0), 64)
	for _, s := range []Stream{New(1, 1), New(2, 0), New(0, 1), New(0, 0)} {
		if bytes.Equal(a, payload(s, 64)) {
			t.Fatalf("stream %+v equals stream (1, 0)", s)
		}
	}
	if New(1, 0).Check(payload(New(1, 1), 64), 0) == nil {
		t.Fatal("connection 1's bytes pass as connection 0's")
	}
}

func TestCheckDetects(t *testing.T) {
	s := New(9, 3)
	const n, chunk = 64 << 10, 4096
	for _, tc := range []struct {
		name string
		mod  func([]byte) []byte
		at   int64 // first offset expected to differ
	}{
		{"flipped bit", func(p []byte) []byte { p[12345] ^= 1; return p }, 12345},
		{"swapped chunks", func(p []byte) []byte {
			a := append([]byte(nil), p[2*chunk:3*chunk]...)
			copy(p[2*chunk:], p[5*chunk:6*chunk])
			copy(p[5*chunk:], a)
			return p
		}, 2 * chunk},
		{"lost chunk", func(p []byte) []byte { return append(p[:chunk:chunk], p[2*chunk:]...) }, chunk},
		{"duplicated chunk", func(p []byte) []byte {
			return append(append(p[:2*chunk:2*chunk], p[chunk:2*chunk]...), p[2*chunk:]...)
		}, 2 * chunk},
		{"lost byte", func(p []byte) []byte { return append(p[:777:777], p[778:]...) }, 777},
		{"zeroed tail", func(p []byte) []byte { clear(p[n-100:]); return p }, n - 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.mod(payload(s, n))
			err := s.Check(p, 0)
			var me *MismatchError
			if !errors.As(err, &me) {
				t.Fatalf("not detected: %v", err)
			}
			// The first differing byte may come a little later than the
			// edit when bytes match by chance (1/256 each).
			if me.Offset < tc.at || me.Offset > tc.at+8 {
				t.Fatalf("mismatch reported at %d, want %d", me.Offset, tc.at)
			}
			// The verifier finds it the same way through small writes.
			v := s.NewVerifier()
			_, err = io.CopyBuffer(v, bytes.NewReader(p), make([]byte, 1000))
			if !errors.As(err, &me) || v.Offset() != me.Offset || v.Err() == nil {
				t.Fatalf("verifier: %v at %d", err, v.Offset())
			}
		})
	}
}

func TestReaderVerifierRoundTrip(t *testing.T) {
	s := New(5, 5)
	r := s.NewReader()
	v := s.NewVerifier()
	// Odd buffer sizes to cross word boundaries at every alignment.
	n, err := io.CopyBuffer(v, io.LimitReader(r, 1<<20+3), make([]byte, 4099))
	if err != nil || n != 1<<20+3 || v.Offset() != n || r.Offset() != n {
		t.Fatalf("copied %d, err %v, verifier at %d, reader at %d", n, err, v.Offset(), r.Offset())
	}
	if _, err := v.Write([]byte{s.At(n) ^ 0xff}); err == nil {
		t.Fatal("wrong byte accepted")
	}
	if _, err := v.Write([]byte{s.At(n)}); err == nil {
		t.Fatal("verifier accepted a write after a mismatch")
	}
}

func TestHeader(t *testing.T) {
	h := Header{Conn: 1999, Seed: 0xdeadbeef, Length: UnknownLength}
	b := h.Marshal()
	got, err := ParseHeader(b[:])
	if err != nil || got != h {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	b[0] ^= 0xff
	if _, err := ParseHeader(b[:]); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("bad magic: %v", err)
	}
	if _, err := ParseHeader(b[:10]); err == nil {
		t.Fatal("short header accepted")
	}
	if h.Stream() != New(0xdeadbeef, 1999) {
		t.Fatal("header names another stream")
	}
}

func BenchmarkFill(b *testing.B) {
	s := New(1, 1)
	p := make([]byte, 64<<10)
	b.SetBytes(int64(len(p)))
	for i := 0; b.Loop(); i++ {
		s.Fill(p, int64(i*len(p)))
	}
}

func BenchmarkCheck(b *testing.B) {
	s := New(1, 1)
	p := payload(s, 64<<10)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if err := s.Check(p, 0); err != nil {
			b.Fatal(err)
		}
	}
}
