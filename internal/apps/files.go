package apps

import (
	"bufio"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// dataFile returns a file of size random bytes under the runner's data
// directory, made once and kept for every run: the same bytes on every
// path. Its md5 is returned too.
func (r *Runner) dataFile(name string, size int64) (path, sum string, err error) {
	return r.makeFile(fmt.Sprintf("%s-%d", name, size), func(w io.Writer, src *rand.ChaCha8) error {
		_, err := io.CopyN(w, src, size)
		return err
	})
}

// textFile is dataFile for line-oriented data made by gen: lines of
// printable text (COPY rows, redis values).
func (r *Runner) textFile(name string, lines int, gen func(i int, rng *rand.Rand) string) (path, sum string, err error) {
	return r.makeFile(fmt.Sprintf("%s-%d", name, lines), func(w io.Writer, src *rand.ChaCha8) error {
		rng := rand.New(src)
		for i := range lines {
			if _, err := io.WriteString(w, gen(i, rng)); err != nil {
				return err
			}
		}
		return nil
	})
}

// makeFile makes the data file key with fill, seeded by key, once.
func (r *Runner) makeFile(key string, fill func(io.Writer, *rand.ChaCha8) error) (path, sum string, err error) {
	if p, ok := r.files[key]; ok {
		return p, r.files[key+".md5"], nil
	}
	if err := os.MkdirAll(r.dataDir(), 0o755); err != nil {
		return "", "", err
	}
	path = filepath.Join(r.dataDir(), key)
	f, err := os.Create(path)
	if err != nil {
		return "", "", err
	}
	h := md5.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	err = fill(w, rand.NewChaCha8(seed(key)))
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", "", fmt.Errorf("write %s: %w", path, err)
	}
	sum = hex.EncodeToString(h.Sum(nil))
	r.files[key], r.files[key+".md5"] = path, sum
	return path, sum, nil
}

func seed(key string) [32]byte {
	var s [32]byte
	h := fnv.New64a()
	h.Write([]byte(key))
	copy(s[:], h.Sum(nil))
	copy(s[8:], key)
	return s
}

// hexString returns n random hex digits.
func hexString(rng *rand.Rand, n int) string {
	var sb strings.Builder
	const digits = "0123456789abcdef"
	for range n {
		sb.WriteByte(digits[rng.IntN(16)])
	}
	return sb.String()
}

// writeFile writes a scratch file (a configuration, a script) into dir.
func writeFile(dir, name, content string) (string, error) {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		return "", err
	}
	return p, nil
}
