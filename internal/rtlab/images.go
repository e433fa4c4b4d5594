package rtlab

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Image references of the two images every lab imports.
const (
	// PauseImage is the sandbox image: a static Go program that sleeps and
	// reaps children.
	PauseImage = "localhost/patu/pause:3.9"
	// WorkloadImage is the image of containers started by
	// Lab.StartContainer: busybox-static (/bin/busybox and its applets)
	// plus Config.ImageFiles.
	WorkloadImage = "localhost/patu/workload:latest"
)

// busyboxPath is where Debian's busybox-static installs its binary.
const busyboxPath = "/bin/busybox"

// imageEpoch is the modification time of every file in a built image, so
// the same inputs always give the same digests.
var imageEpoch = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// imageTTL is how long a cached image tarball that no lab has used stays in
// the tools directory. Images with caller files change with every rebuild
// of those files; without pruning the cache would only grow.
const imageTTL = 7 * 24 * time.Hour

// pauseSource is the sandbox process. Any process that blocks forever would
// do; this one also exits on SIGTERM and reaps zombies, as pause does.
const pauseSource = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

// Minimal pause: sleep until SIGINT/SIGTERM, reap children on SIGCHLD.
func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
`

const pauseGoMod = "module patu.local/pause\n\ngo 1.22\n"

// imageMu serialises image building within the process; the flock in
// buildImages does so between processes (go test runs packages in parallel).
var imageMu sync.Mutex

// builtImages are the tarballs of a lab's two images.
type builtImages struct {
	pause, workload string
}

// buildImages returns the OCI tarballs of the pause and workload images,
// building whatever the cache under tools does not hold yet.
func buildImages(ctx context.Context, tools string, files map[string]string) (builtImages, error) {
	imageMu.Lock()
	defer imageMu.Unlock()
	dir := filepath.Join(tools, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return builtImages{}, fmt.Errorf("create image cache: %w", err)
	}
	unlock, err := lockFile(filepath.Join(dir, ".lock"))
	if err != nil {
		return builtImages{}, err
	}
	defer unlock()

	var imgs builtImages
	pauseBin, err := buildPause(ctx, filepath.Join(tools, "pause"))
	if err != nil {
		return imgs, err
	}
	pauseData, err := os.ReadFile(pauseBin)
	if err != nil {
		return imgs, fmt.Errorf("read pause binary: %w", err)
	}
	pause := imageSpec{
		ref:        PauseImage,
		entrypoint: []string{"/pause"},
		files:      []fileEntry{{name: "pause", mode: 0o755, typ: tar.TypeReg, data: pauseData}},
	}
	if imgs.pause, err = cacheImage(dir, "pause", pause); err != nil {
		return imgs, err
	}
	work, err := workloadSpec(ctx, files)
	if err != nil {
		return imgs, err
	}
	if imgs.workload, err = cacheImage(dir, "workload", work); err != nil {
		return imgs, err
	}
	pruneImages(dir, imgs.pause, imgs.workload)
	return imgs, nil
}

// lockFile takes an exclusive flock on path, creating it, and returns the
// function that releases it.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// buildPause returns the path of the pause binary, building it with the go
// command into dir/<hash of the source>/ when it is not there yet.
func buildPause(ctx context.Context, dir string) (string, error) {
	sum := sha256.Sum256([]byte(pauseSource + pauseGoMod + runtime.GOARCH))
	src := filepath.Join(dir, hex.EncodeToString(sum[:8]))
	bin := filepath.Join(src, "pause")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	goBin, err := findGo()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", fmt.Errorf("create pause source dir: %w", err)
	}
	for name, data := range map[string]string{"main.go": pauseSource, "go.mod": pauseGoMod} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o644); err != nil {
			return "", fmt.Errorf("write pause source: %w", err)
		}
	}
	tmp := bin + ".tmp"
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, ".")
	cmd.Dir = src
	// Static, for this machine, and untouched by the caller's module
	// settings (a GOFLAGS=-mod=vendor or a go.work would break the build).
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH,
		"GOFLAGS=-buildvcs=false", "GOWORK=off", "GOTOOLCHAIN=local", "GO111MODULE=on")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("build pause binary: %w: %s", err, bytes.TrimSpace(out))
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("install pause binary: %w", err)
	}
	return bin, nil
}

// findGo returns the go command, which builds the pause binary.
func findGo() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); isExecutable(p) {
			return p, nil
		}
	}
	if p := "/usr/local/go/bin/go"; isExecutable(p) {
		return p, nil
	}
	return "", errors.New("go command not found (it builds the pause image): put Go on PATH")
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// workloadSpec describes the workload image: busybox, its applets as
// symlinks in /bin, a minimal /etc, and the caller's files.
func workloadSpec(ctx context.Context, files map[string]string) (imageSpec, error) {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return imageSpec{}, fmt.Errorf("read %s (apt-get install busybox-static): %w", busyboxPath, err)
	}
	if err := checkStatic(busyboxPath); err != nil {
		return imageSpec{}, err
	}
	out, err := exec.CommandContext(ctx, busyboxPath, "--list").Output()
	if err != nil {
		return imageSpec{}, fmt.Errorf("list busybox applets: %w", err)
	}
	s := imageSpec{ref: WorkloadImage, cmd: []string{"sh"}}
	add := func(e fileEntry) { s.files = append(s.files, e) }
	add(fileEntry{name: "bin/busybox", mode: 0o755, typ: tar.TypeReg, data: bb})
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			add(fileEntry{name: "bin/" + a, mode: 0o777, typ: tar.TypeSymlink, link: "busybox"})
		}
	}
	add(fileEntry{name: "etc/passwd", mode: 0o644, typ: tar.TypeReg, data: []byte("root:x:0:0:root:/root:/bin/sh\n")})
	add(fileEntry{name: "etc/group", mode: 0o644, typ: tar.TypeReg, data: []byte("root:x:0:\n")})
	add(fileEntry{name: "tmp", mode: 0o1777, typ: tar.TypeDir})
	add(fileEntry{name: "root", mode: 0o700, typ: tar.TypeDir})
	for _, dst := range slices.Sorted(maps.Keys(files)) {
		name, err := imagePath(dst)
		if err != nil {
			return imageSpec{}, err
		}
		src := files[dst]
		fi, err := os.Stat(src)
		if err != nil {
			return imageSpec{}, fmt.Errorf("image file %s: %w", dst, err)
		}
		if !fi.Mode().IsRegular() {
			return imageSpec{}, fmt.Errorf("image file %s: %s is not a regular file", dst, src)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return imageSpec{}, fmt.Errorf("image file %s: %w", dst, err)
		}
		// A caller's file replaces an applet link of the same name.
		s.files = slices.DeleteFunc(s.files, func(e fileEntry) bool { return e.name == name })
		add(fileEntry{name: name, mode: int64(fi.Mode().Perm()), typ: tar.TypeReg, data: data})
	}
	return s, nil
}

// imagePath turns an absolute path in the image into a tar entry name.
func imagePath(p string) (string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return "", fmt.Errorf("image file %q: want a clean absolute path such as /bin/patu-testpeer", p)
	}
	return p[1:], nil
}

// checkStatic fails for a dynamically linked executable: the image has no
// libc, so Debian's plain busybox package would not run in it.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: apt-get install busybox-static", p)
		}
	}
	return nil
}

// fileEntry is one file of an image layer.
type fileEntry struct {
	name string // path in the image without the leading slash
	mode int64  // permission bits (and sticky bit)
	typ  byte   // tar.TypeReg, tar.TypeDir or tar.TypeSymlink
	link string // symlink target
	data []byte // regular file content
}

// imageSpec is a single-layer image.
type imageSpec struct {
	ref        string
	entrypoint []string
	cmd        []string
	files      []fileEntry
}

// key hashes everything the tarball is made of, so a cached tarball can be
// found without building it.
func (s imageSpec) key() string {
	h := sha256.New()
	fmt.Fprintf(h, "rtlab-image-v1\x00%s\x00%q\x00%q\x00%s\x00", s.ref, s.entrypoint, s.cmd, runtime.GOARCH)
	for _, e := range s.files {
		d := sha256.Sum256(e.data)
		fmt.Fprintf(h, "%s\x00%o\x00%c\x00%s\x00%x\x00", e.name, e.mode, e.typ, e.link, d)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// cacheImage returns the path of the tarball of s in dir, writing it first
// when it is not there. It refreshes the file's time, which pruneImages
// goes by.
func cacheImage(dir, name string, s imageSpec) (string, error) {
	p := filepath.Join(dir, name+"-"+s.key()+".tar")
	if _, err := os.Stat(p); err == nil {
		now := time.Now()
		if err := os.Chtimes(p, now, now); err != nil {
			return "", fmt.Errorf("touch %s: %w", p, err)
		}
		return p, nil
	}
	data, err := buildOCI(s)
	if err != nil {
		return "", fmt.Errorf("build image %s: %w", s.ref, err)
	}
	if err := writeFileAtomic(p, data, 0o644); err != nil {
		return "", fmt.Errorf("write image %s: %w", s.ref, err)
	}
	return p, nil
}

// pruneImages removes cached tarballs not used for imageTTL, except keep.
// Best effort: a cache that cannot be pruned still works.
func pruneImages(dir string, keep ...string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if !strings.HasSuffix(e.Name(), ".tar") || slices.Contains(keep, p) {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > imageTTL {
			os.Remove(p)
		}
	}
}

func writeFileAtomic(p string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(p), filepath.Base(p)+".tmp*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), perm)
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// OCI image layout and image spec documents, only the fields used.
type (
	ociDescriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Platform    *ociPlatform      `json:"platform,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	ociPlatform struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	}
	ociIndex struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Manifests     []ociDescriptor `json:"manifests"`
	}
	ociManifest struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Config        ociDescriptor   `json:"config"`
		Layers        []ociDescriptor `json:"layers"`
	}
	ociConfig struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			Env        []string `json:"Env"`
			Entrypoint []string `json:"Entrypoint,omitempty"`
			Cmd        []string `json:"Cmd,omitempty"`
			WorkingDir string   `json:"WorkingDir"`
		} `json:"config"`
		RootFS struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
		History []struct {
			Created   time.Time `json:"created"`
			CreatedBy string    `json:"created_by"`
		} `json:"history"`
	}
)

const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// buildOCI returns an OCI image layout as a tarball, the format
// `ctr images import` (and `podman load`) read: one uncompressed layer
// holding s.files, a config, a manifest, and an index naming the image
// s.ref through the io.containerd.image.name annotation.
func buildOCI(s imageSpec) ([]byte, error) {
	layer, err := buildLayer(s.files)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	blobs := map[string][]byte{}
	add := func(mediaType string, data []byte) ociDescriptor {
		d := sha256.Sum256(data)
		digest := "sha256:" + hex.EncodeToString(d[:])
		blobs[digest] = data
		return ociDescriptor{MediaType: mediaType, Digest: digest, Size: len(data)}
	}
	layerDesc := add(mediaLayer, layer)

	var cfg ociConfig
	cfg.Architecture, cfg.OS = runtime.GOARCH, "linux"
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.Entrypoint, cfg.Config.Cmd, cfg.Config.WorkingDir = s.entrypoint, s.cmd, "/"
	cfg.RootFS.Type = "layers"
	// Uncompressed layer: its diff id is its digest.
	cfg.RootFS.DiffIDs = []string{layerDesc.Digest}
	cfg.History = append(cfg.History, struct {
		Created   time.Time `json:"created"`
		CreatedBy string    `json:"created_by"`
	}{imageEpoch, "patu internal/rtlab"})
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	man, err := json.Marshal(ociManifest{
		SchemaVersion: 2, MediaType: mediaManifest,
		Config: add(mediaConfig, cfgJSON), Layers: []ociDescriptor{layerDesc},
	})
	if err != nil {
		return nil, err
	}
	manDesc := add(mediaManifest, man)
	manDesc.Platform = &ociPlatform{Architecture: runtime.GOARCH, OS: "linux"}
	_, tag, _ := strings.Cut(path.Base(s.ref), ":")
	manDesc.Annotations = map[string]string{
		"io.containerd.image.name":          s.ref,
		"org.opencontainers.image.ref.name": tag,
	}
	index, err := json.Marshal(ociIndex{SchemaVersion: 2, MediaType: mediaIndex, Manifests: []ociDescriptor{manDesc}})
	if err != nil {
		return nil, err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	write := func(name string, typ byte, data []byte) error {
		mode := int64(0o644)
		if typ == tar.TypeDir {
			mode = 0o755
		}
		h := &tar.Header{Name: name, Typeflag: typ, Mode: mode, Size: int64(len(data)), ModTime: imageEpoch}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := write("oci-layout", tar.TypeReg, []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	if err := write("index.json", tar.TypeReg, index); err != nil {
		return nil, err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := write(d, tar.TypeDir, nil); err != nil {
			return nil, err
		}
	}
	for _, digest := range slices.Sorted(maps.Keys(blobs)) {
		if err := write("blobs/sha256/"+strings.TrimPrefix(digest, "sha256:"), tar.TypeReg, blobs[digest]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// buildLayer returns a reproducible layer tarball of files: sorted, owned
// by root, one fixed time, with every parent directory present.
func buildLayer(files []fileEntry) ([]byte, error) {
	all := map[string]fileEntry{}
	for _, e := range files {
		all[e.name] = e
		for d := path.Dir(e.name); d != "."; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = fileEntry{name: d, mode: 0o755, typ: tar.TypeDir}
			}
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(all)) {
		e := all[name]
		h := &tar.Header{
			Name: e.name, Typeflag: e.typ, Mode: e.mode, ModTime: imageEpoch,
			Linkname: e.link, Size: int64(len(e.data)),
		}
		switch e.typ {
		case tar.TypeDir:
			h.Name += "/"
			h.Size = 0
		case tar.TypeSymlink:
			h.Size = 0
		case tar.TypeReg:
		default:
			return nil, fmt.Errorf("%s: unsupported type %q", e.name, e.typ)
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", e.name, err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return nil, fmt.Errorf("%s: %w", e.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
