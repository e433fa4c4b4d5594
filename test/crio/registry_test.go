package crio

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/patu-dev/patu/netns"
)

// registry serves OCI-layout image tarballs read-only over the OCI
// distribution API, the part of it a pull uses: GET /v2/, manifests by tag
// or digest, blobs by digest. CRI-O has no offline import of its own (its
// PullImage takes docker references only, and podman or skopeo would
// write the same containers/storage from another, older, copy of that
// library), so the lab pulls from this, which keeps the image path the one
// a node uses.
type registry struct {
	ln    net.Listener
	blobs map[string][]byte // digest -> content (manifests, configs, layers)
	tags  map[string]string // "repo:tag" -> manifest digest
}

// serveRegistry listens on addr inside the network namespace nsPath (the
// listening socket stays there; the server goroutine may run anywhere) and
// serves the images of the tarballs. An image named
// "localhost/patu/pause:3.9" (io.containerd.image.name) is served as
// repository "patu/pause", tag "3.9".
func serveRegistry(nsPath, addr string, tarballs ...string) (*registry, error) {
	r := &registry{blobs: map[string][]byte{}, tags: map[string]string{}}
	for _, p := range tarballs {
		if err := r.add(p); err != nil {
			return nil, err
		}
	}
	err := netns.Do(nsPath, func() error {
		var err error
		r.ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("registry listen on %s in %s: %w", addr, nsPath, err)
	}
	go http.Serve(r.ln, r)
	return r, nil
}

func (r *registry) Close() error { return r.ln.Close() }

func (r *registry) add(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var index []byte
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if h.Name == "index.json" {
			index = b
		} else if d, ok := strings.CutPrefix(h.Name, "blobs/sha256/"); ok {
			r.blobs["sha256:"+d] = b
		}
	}
	var idx struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(index, &idx); err != nil {
		return fmt.Errorf("%s: index.json: %w", path, err)
	}
	for _, m := range idx.Manifests {
		name := m.Annotations["io.containerd.image.name"]
		_, rest, ok := strings.Cut(name, "/") // drop the registry host
		if !ok || !strings.Contains(rest, ":") {
			return fmt.Errorf("%s: image name %q: want host/repo:tag", path, name)
		}
		r.tags[rest] = m.Digest
	}
	return nil
}

func (r *registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "read-only registry", http.StatusMethodNotAllowed)
		return
	}
	p, ok := strings.CutPrefix(req.URL.Path, "/v2/")
	if !ok && req.URL.Path != "/v2" {
		http.NotFound(w, req)
		return
	}
	if p == "" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		return
	}
	var digest, ctype string
	if i := strings.LastIndex(p, "/manifests/"); i >= 0 {
		repo, ref := p[:i], p[i+len("/manifests/"):]
		digest = ref
		if !strings.HasPrefix(ref, "sha256:") {
			digest = r.tags[repo+":"+ref]
		}
		ctype = "application/vnd.oci.image.manifest.v1+json"
	} else if i := strings.LastIndex(p, "/blobs/"); i >= 0 {
		digest = p[i+len("/blobs/"):]
		ctype = "application/octet-stream"
	}
	b, ok := r.blobs[digest]
	if !ok {
		http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	if req.Method == http.MethodGet {
		w.Write(b)
	}
}
